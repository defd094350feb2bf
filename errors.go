package fnmesh

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Code classifies an error so that a caller can act on it without parsing
// messages. The codes below are the mesh's own; a function may return any
// other code (an application code, such as "insufficient_funds").
type Code string

// The mesh's codes. Their string values are part of the wire protocol.
const (
	CodeInvalidArgument   Code = "invalid_argument"   // the request is malformed or fails validation
	CodeUnauthenticated   Code = "unauthenticated"    // missing, malformed, expired or wrongly signed token
	CodePermissionDenied  Code = "permission_denied"  // the token is valid but may not call this function
	CodeNotFound          Code = "not_found"          // no such function
	CodeDeadlineExceeded  Code = "deadline_exceeded"  // the call's deadline passed before a result arrived
	CodeUnavailable       Code = "unavailable"        // transport down, breaker open, client closed: try later
	CodeResourceExhausted Code = "resource_exhausted" // a backlog or rate bound was reached
	CodeCanceled          Code = "canceled"           // the caller canceled its context
	CodeInternal          Code = "internal"           // the function failed unexpectedly (error or panic)
)

var meshCodes = map[Code]bool{
	CodeInvalidArgument: true, CodeUnauthenticated: true, CodePermissionDenied: true,
	CodeNotFound: true, CodeDeadlineExceeded: true, CodeUnavailable: true,
	CodeResourceExhausted: true, CodeCanceled: true, CodeInternal: true,
}

// IsMeshCode reports whether c is one of the mesh's own codes, as opposed
// to an application code chosen by a function.
func (c Code) IsMeshCode() bool { return meshCodes[c] }

// FieldViolation names one request field that failed validation.
type FieldViolation struct {
	Field string `json:"field"`           // JSON path of the field, e.g. "items[0].qty"
	Rule  string `json:"rule"`            // the failed rule, e.g. "required", "gte"
	Param string `json:"param,omitempty"` // the rule's parameter, e.g. "0" for gte=0
}

// Error is the error every fnmesh call returns. Code says what kind of
// failure it is; Message says what happened, for people.
//
// errors.Is matches an Error against the sentinels below by code, so
//
//	errors.Is(err, fnmesh.ErrNotFound)
//
// works whatever the message. errors.As(err, &e) with e *fnmesh.Error
// gives the code, message and field violations.
type Error struct {
	Code    Code
	Message string
	// Fields lists the failed fields of an invalid_argument error.
	Fields []FieldViolation
	cause  error
}

// Sentinels for errors.Is. They carry no message: any Error with the same
// code matches.
var (
	ErrInvalidArgument   = &Error{Code: CodeInvalidArgument}
	ErrUnauthenticated   = &Error{Code: CodeUnauthenticated}
	ErrPermissionDenied  = &Error{Code: CodePermissionDenied}
	ErrNotFound          = &Error{Code: CodeNotFound}
	ErrDeadlineExceeded  = &Error{Code: CodeDeadlineExceeded}
	ErrUnavailable       = &Error{Code: CodeUnavailable}
	ErrResourceExhausted = &Error{Code: CodeResourceExhausted}
	ErrCanceled          = &Error{Code: CodeCanceled}
	ErrInternal          = &Error{Code: CodeInternal}
)

// NewError returns an Error with the given code and message. Functions use
// it for application errors: fnmesh.NewError("insufficient_funds", "...").
func NewError(code Code, message string) *Error {
	return &Error{Code: code, Message: message}
}

// Errorf is NewError with a formatted message. A %w verb keeps the wrapped
// error reachable through errors.Is/As on the side that created it (the
// wrapped error itself does not cross the wire, only its text).
func Errorf(code Code, format string, args ...any) *Error {
	err := fmt.Errorf(format, args...)
	return &Error{Code: code, Message: err.Error(), cause: errors.Unwrap(err)}
}

// Wrap returns an Error with the given code whose message is err's text
// and which unwraps to err.
func Wrap(code Code, err error) *Error {
	return &Error{Code: code, Message: err.Error(), cause: err}
}

func (e *Error) Error() string {
	if e.Message == "" {
		return string(e.Code)
	}
	return string(e.Code) + ": " + e.Message
}

// Unwrap returns the local cause, if any (never set on errors that came
// over the wire).
func (e *Error) Unwrap() error { return e.cause }

// Is matches a sentinel (an Error with no message) by code, and the
// standard context errors by their codes.
func (e *Error) Is(target error) bool {
	switch target {
	case context.DeadlineExceeded:
		return e.Code == CodeDeadlineExceeded
	case context.Canceled:
		return e.Code == CodeCanceled
	}
	t, ok := target.(*Error)
	return ok && t.Message == "" && len(t.Fields) == 0 && t.Code == e.Code
}

// CodeOf returns the code of err: the Code of an *Error in its chain,
// deadline_exceeded or canceled for the context errors, internal for any
// other non-nil error and "" for nil.
func CodeOf(err error) Code {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return CodeDeadlineExceeded
	case errors.Is(err, context.Canceled):
		return CodeCanceled
	}
	return CodeInternal
}

// ValidCode reports whether c may be sent as a code: lower case letters,
// digits, '_' and '.', 1 to 64 bytes.
func ValidCode(c Code) bool {
	if len(c) == 0 || len(c) > 64 {
		return false
	}
	return strings.IndexFunc(string(c), func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '.')
	}) < 0
}
