package gateway

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/fnmesh/fnmesh"
)

// StatusApplicationError is the HTTP status of a function's own
// application error (any code that is not one of the mesh's): 422
// Unprocessable Content. The request was well formed and reached the
// function, which refused it for a reason of its own; the body's code
// says which.
const StatusApplicationError = http.StatusUnprocessableEntity

// StatusCanceled is the status logged for a request whose HTTP client went
// away before the result (nginx's 499); the client never sees it.
const StatusCanceled = 499

// HTTPStatus returns the HTTP status of an error code. The status depends
// on the code alone.
func HTTPStatus(code fnmesh.Code) int {
	switch code {
	case "":
		return http.StatusOK
	case fnmesh.CodeInvalidArgument:
		return http.StatusBadRequest
	case fnmesh.CodeUnauthenticated:
		return http.StatusUnauthorized
	case fnmesh.CodePermissionDenied:
		return http.StatusForbidden
	case fnmesh.CodeNotFound:
		return http.StatusNotFound
	case fnmesh.CodeDeadlineExceeded:
		return http.StatusGatewayTimeout
	case fnmesh.CodeUnavailable:
		return http.StatusServiceUnavailable
	case fnmesh.CodeResourceExhausted:
		return http.StatusTooManyRequests
	case fnmesh.CodeCanceled:
		return StatusCanceled
	case fnmesh.CodeInternal:
		return http.StatusInternalServerError
	}
	return StatusApplicationError
}

// ErrorBody is the JSON body of every error response.
type ErrorBody struct {
	// Code is the mesh code (invalid_argument, ...) or the function's
	// application code.
	Code fnmesh.Code `json:"code"`
	// Message says what happened, for people.
	Message string `json:"message"`
	// Fields names the fields that failed validation (invalid_argument);
	// empty otherwise.
	Fields []fnmesh.FieldViolation `json:"fields"`
	// RequestID is the mesh request id, when the request got that far.
	RequestID string `json:"request_id,omitempty"`
}

// errorBody turns any error into the body sent for it. An internal
// error's text (a panic value, an error from deep inside a service) is
// not for HTTP callers: they get a generic message naming the request
// id, and the gateway logs the text (see logInternal).
func errorBody(err error, requestID string) ErrorBody {
	fe := asError(err)
	b := ErrorBody{Code: fe.Code, Message: fe.Message, Fields: fe.Fields, RequestID: requestID}
	if fe.Code == fnmesh.CodeInternal {
		b.Message, b.Fields = internalMessage(requestID), nil
	}
	if b.Fields == nil {
		b.Fields = []fnmesh.FieldViolation{}
	}
	return b
}

func internalMessage(requestID string) string {
	if requestID == "" {
		return "internal error; the details are in the gateway's log"
	}
	return "internal error; the details are in the logs under request id " + requestID
}

func asError(err error) *fnmesh.Error {
	var fe *fnmesh.Error
	if errors.As(err, &fe) {
		return fe
	}
	return &fnmesh.Error{Code: fnmesh.CodeOf(err), Message: err.Error()}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"code":"internal","message":"response not encodable","fields":[]}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, err error, requestID string) fnmesh.Code {
	body := errorBody(err, requestID)
	writeJSON(w, HTTPStatus(body.Code), body)
	return body.Code
}
