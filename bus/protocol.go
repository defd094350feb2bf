package bus

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/internal/wire"
)

// ProtocolVersion is the value of the "v" field this code writes and reads.
const ProtocolVersion = "1"

// Group is the consumer group every replica of a service joins on the
// service's request stream.
const Group = "fnmesh"

// Topic names. On Redis a topic is the stream key itself; the braces are a
// Redis Cluster hash tag, so a service's request stream and its dead
// letters live on one shard, and reply streams spread by inbox id.
func RequestTopic(service string) string    { return "fnmesh:{" + service + "}:req" }
func DeadLetterTopic(service string) string { return "fnmesh:{" + service + "}:dead" }
func ReplyTopic(inbox string) string        { return "fnmesh:reply:{" + inbox + "}" }

// FunctionTopic is where requests for function of service go: the
// service's request stream, or, for a versioned function ("add@v2"), a
// stream of its own, fnmesh:{SERVICE}:req:add@v2, so that only replicas
// that serve that version take its requests while older replicas run
// beside them.
func FunctionTopic(service, function string) string {
	p := functionTopicParts(service, function)
	return p[0] + p[1] + p[2] + p[3]
}

// functionTopicParts is FunctionTopic in parts, for a caller that writes
// them out without making the string (wire.Cmd.argConcat).
func functionTopicParts(service, function string) [4]string {
	if strings.Contains(function, "@") {
		return [4]string{"fnmesh:{", service, "}:req:", function}
	}
	return [4]string{"fnmesh:{", service, "}:req", ""}
}

// isRequestTopic reports whether topic is a service's request stream
// (FunctionTopic), as opposed to its dead letters or other keys.
func isRequestTopic(topic string) bool {
	_, rest, ok := strings.Cut(topic, "}:req")
	return ok && strings.HasPrefix(topic, "fnmesh:{") && (rest == "" || strings.HasPrefix(rest, ":"))
}

// serviceOfTopic returns the service of a topic fnmesh:{SERVICE}:...,
// or "" for another topic.
func serviceOfTopic(topic string) string {
	rest, ok := strings.CutPrefix(topic, "fnmesh:{")
	if !ok {
		return ""
	}
	svc, _, ok := strings.Cut(rest, "}")
	if !ok {
		return ""
	}
	return svc
}

// InboxTopic returns the reply topic of a caller on b with random id: on
// a Redis bus logged in as an ACL user, fnmesh:reply:{USER:ID}, so that
// an ACL can give each caller its own inbox and no other (the caller ACL
// of docs/SECURITY.md); else ReplyTopic(id).
func InboxTopic(b Bus, id string) string {
	if u, ok := b.(interface{ aclUser() string }); ok && u.aclUser() != "" {
		return ReplyTopic(u.aclUser() + ":" + id)
	}
	return ReplyTopic(id)
}

// validACLUser reports whether name can name inboxes: letters, digits,
// '_', '-', '.', none of which is special in an ACL key pattern, a
// Cluster hash tag or the USER:ID separator.
func validACLUser(name string) bool {
	if len(name) == 0 || len(name) > 64 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// IsReplyTopic reports whether topic names a caller's reply stream.
func IsReplyTopic(topic string) bool { return strings.HasPrefix(topic, "fnmesh:reply:") }

// Field names of request, reply and dead-letter entries. They are the
// Redis stream fields one for one; docs/PROTOCOL.md describes each.
const (
	FieldVersion     = "v"
	FieldID          = "id"
	FieldFunction    = "fn"
	FieldPayload     = "p"
	FieldReplyTo     = "rt"
	FieldDeadline    = "dl"
	FieldToken       = "tok"
	FieldCaller      = "from"
	FieldTraceParent = "tp"
	FieldIdempotency = "ik"

	FieldCode    = "code"
	FieldMessage = "msg"
	FieldDetails = "det"
	FieldReplica = "by"

	FieldReplayOf = "replay_of" // on a replayed request: the dead letter it came from
	// FieldTooLarge, set by a reader that refused a field too large to
	// read (GroupConfig.MaxFieldBytes): "NAME SIZE", the field and its
	// size in bytes. The field holds its first TooLargePrefix bytes.
	FieldTooLarge = "too_large"

	FieldReason   = "reason"
	FieldAttempts = "attempts"
	FieldEntry    = "entry"
	FieldAt       = "at"
)

// TooLargePrefix is how much of a field too large to read a message
// (and so its dead letter) keeps.
const TooLargePrefix = wire.TooLargePrefix

// requestFieldOrder is the order in which a Redis publisher writes known
// fields, so entries read well in redis-cli.
var fieldOrder = []string{
	FieldVersion, FieldID, FieldFunction, FieldReplyTo, FieldDeadline, FieldCaller,
	FieldIdempotency, FieldTraceParent, FieldToken,
	FieldCode, FieldMessage, FieldDetails, FieldReplica,
	FieldReason, FieldAttempts, FieldEntry, FieldAt,
}

// Request is one function call as it travels on the bus.
type Request struct {
	ID             string    // correlation id, unique per caller inbox
	Function       string    // function name within the service, e.g. "add"
	Payload        []byte    // JSON arguments
	ReplyTo        string    // reply topic; empty for Send
	Deadline       time.Time // zero: none
	Token          string    // bearer token, may be empty
	Caller         string    // caller's name, for logs and metrics
	TraceParent    string    // W3C traceparent, may be empty
	IdempotencyKey string    // may be empty
	// Value is the caller's Go argument, for a replica in the caller's
	// own process (handlers.Service.Dispatch), which may use it instead of
	// decoding Payload; when set, Payload is its encoding by
	// json.Marshal. It never goes on the wire.
	Value any

	// Failed, if set, lets SendRequest return as soon as the request is
	// on its way, before it is stored, and reports a failure to store it
	// here instead (from another goroutine, at most once). A call sets
	// it: its reply proves the request was stored, so waiting for the
	// store too would only wake the caller twice.
	Failed func(error)
}

// appendFields appends r's stream fields and values to an XADD, in
// protocol order: no message, no map.
func (r *Request) appendFields(c *wire.Cmd) {
	c.Arg(FieldVersion)
	c.Arg(ProtocolVersion)
	c.Arg(FieldID)
	c.Arg(r.ID)
	c.Arg(FieldFunction)
	c.Arg(r.Function)
	appendIf(c, FieldReplyTo, r.ReplyTo)
	if !r.Deadline.IsZero() {
		c.Arg(FieldDeadline)
		c.ArgInt(r.Deadline.UnixMilli())
	}
	appendIf(c, FieldCaller, r.Caller)
	appendIf(c, FieldIdempotency, r.IdempotencyKey)
	appendIf(c, FieldTraceParent, r.TraceParent)
	appendIf(c, FieldToken, r.Token)
	if len(r.Payload) > 0 {
		c.Arg(FieldPayload)
		c.ArgBytes(r.Payload)
	}
}

func appendIf(c *wire.Cmd, k, v string) {
	if v != "" {
		c.Arg(k)
		c.Arg(v)
	}
}

// appendFields appends a reply's stream fields and values to an XADD.
func (r *Reply) appendFields(c *wire.Cmd) {
	c.Arg(FieldID)
	c.Arg(r.ID)
	appendIf(c, FieldReplica, r.Replica)
	if r.Err != nil {
		c.Arg(FieldCode)
		c.Arg(string(r.Err.Code))
		c.Arg(FieldMessage)
		c.Arg(r.Err.Message)
		if len(r.Err.Fields) > 0 {
			b, _ := json.Marshal(wireDetails{Fields: r.Err.Fields})
			c.Arg(FieldDetails)
			c.ArgBytes(b)
		}
		return
	}
	c.Arg(FieldPayload)
	c.ArgBytes(r.Payload)
}

// decodeReply reads a reply from a stream entry.
func decodeReply(e wire.Entry) (*Reply, error) {
	r := &Reply{}
	var code, msg, det, payload string
	e.Each(func(k, v string) bool { // one pass; a field given twice counts once
		var to *string
		switch k {
		case FieldID:
			to = &r.ID
		case FieldReplica:
			to = &r.Replica
		case FieldCode:
			to = &code
		case FieldMessage:
			to = &msg
		case FieldDetails:
			to = &det
		case FieldPayload:
			to = &payload
		default:
			return true
		}
		if *to == "" {
			*to = v
		}
		return true
	})
	if r.ID == "" || strings.HasPrefix(e.TooLarge, FieldID+" ") {
		return r, fmt.Errorf("%w: reply without %q", ErrMalformed, FieldID)
	}
	if e.TooLarge != "" {
		// A field cut short by the inbox's reader (MaxReplyBytes).
		name, size, _ := strings.Cut(e.TooLarge, " ")
		r.Err = fnmesh.Errorf(fnmesh.CodeResourceExhausted, "the reply's field %q of %s bytes exceeds this caller's limit (RedisConfig.MaxReplyBytes)", name, size)
		return r, nil
	}
	if code != "" {
		r.Err = &fnmesh.Error{Code: fnmesh.Code(code), Message: msg}
		if det != "" {
			var d wireDetails
			if err := json.Unmarshal([]byte(det), &d); err == nil {
				r.Err.Fields = d.Fields
			}
		}
		return r, nil
	}
	r.Payload = bytesOf(payload)
	return r, nil
}

// Message encodes r as a watermill message: fields in Metadata, the
// arguments in Payload.
func (r *Request) Message() *message.Message {
	m := message.NewMessage(r.ID, r.Payload)
	md := m.Metadata
	md[FieldVersion] = ProtocolVersion
	md[FieldID] = r.ID
	md[FieldFunction] = r.Function
	setIf(md, FieldReplyTo, r.ReplyTo)
	if !r.Deadline.IsZero() {
		md[FieldDeadline] = strconv.FormatInt(r.Deadline.UnixMilli(), 10)
	}
	setIf(md, FieldToken, r.Token)
	setIf(md, FieldCaller, r.Caller)
	setIf(md, FieldTraceParent, r.TraceParent)
	setIf(md, FieldIdempotency, r.IdempotencyKey)
	return m
}

func setIf(md message.Metadata, k, v string) {
	if v != "" {
		md[k] = v
	}
}

// ErrMalformed is wrapped by every decoding error: the entry is not a
// request (or reply) this version understands.
var ErrMalformed = errors.New("malformed entry")

// DecodeRequest reads a request from m. On error the returned Request still
// holds whatever could be read (notably ID and ReplyTo), so that the
// sender can be answered.
func DecodeRequest(m *message.Message) (*Request, error) {
	r := new(Request)
	return r, DecodeRequestInto(m, r)
}

// DecodeRequestInto is DecodeRequest into r, for a caller that keeps the
// request inside a struct of its own (one allocation, not two).
func DecodeRequestInto(m *message.Message, r *Request) error {
	md := m.Metadata
	f := requestFields{deadline: md[FieldDeadline], tooLarge: md[FieldTooLarge]}
	f.version, f.hasVersion = md[FieldVersion]
	f.r = Request{
		ID:             md[FieldID],
		Function:       md[FieldFunction],
		Payload:        m.Payload,
		ReplyTo:        md[FieldReplyTo],
		Token:          md[FieldToken],
		Caller:         md[FieldCaller],
		TraceParent:    md[FieldTraceParent],
		IdempotencyKey: md[FieldIdempotency],
	}
	return f.decode(r)
}

// decodeRequestEntry is DecodeRequestInto straight from a stream wire.Entry,
// with no message between: the strings share the entry's memory. A field
// given twice counts with its last value, as in a message's Metadata.
func decodeRequestEntry(e wire.Entry, r *Request) error {
	f := requestFields{tooLarge: e.TooLarge}
	e.Each(func(k, v string) bool {
		switch k {
		case FieldPayload:
			f.r.Payload = bytesOf(v)
		case FieldID:
			f.r.ID = v
		case FieldFunction:
			f.r.Function = v
		case FieldReplyTo:
			f.r.ReplyTo = v
		case FieldToken:
			f.r.Token = v
		case FieldCaller:
			f.r.Caller = v
		case FieldTraceParent:
			f.r.TraceParent = v
		case FieldIdempotency:
			f.r.IdempotencyKey = v
		case FieldDeadline:
			f.deadline = v
		case FieldVersion:
			f.version, f.hasVersion = v, true
		case FieldTooLarge:
			if e.TooLarge == "" { // the reader's mark wins over a sender's
				f.tooLarge = v
			}
		}
		return true
	})
	return f.decode(r)
}

// decodeSentRequest is DecodeRequestInto for a request stored as
// SendRequest was given it (Memory): the same checks, and its deadline
// kept to the millisecond, as the wire keeps it.
func decodeSentRequest(sent *Request, r *Request) error {
	f := requestFields{r: *sent}
	f.r.Deadline, f.r.Value, f.r.Failed = time.Time{}, nil, nil
	err := f.decode(r)
	if !sent.Deadline.IsZero() {
		ms := sent.Deadline.UnixMilli()
		if ms <= 0 && err == nil {
			err = fmt.Errorf("%w: field %q is not unix milliseconds: %d", ErrMalformed, FieldDeadline, ms)
		}
		r.Deadline = time.UnixMilli(ms)
	}
	return err
}

// requestFields are a request's fields as read, before the checks that
// make them a Request.
type requestFields struct {
	r          Request // every field but Deadline
	deadline   string  // FieldDeadline: unix milliseconds
	version    string
	hasVersion bool
	tooLarge   string // FieldTooLarge
}

// decode checks f and sets *r. On error r still holds whatever could be
// read (notably ID and ReplyTo), so that the sender can be answered.
func (f *requestFields) decode(r *Request) error {
	*r = f.r
	if r.ReplyTo != "" && !IsReplyTopic(r.ReplyTo) {
		// Never write replies to a key that is not a reply stream: a
		// malformed or hostile entry must not make replicas grow other keys.
		r.ReplyTo = ""
		return fmt.Errorf("%w: field %q is not a reply stream", ErrMalformed, FieldReplyTo)
	}
	if tl := f.tooLarge; tl != "" {
		name, size, _ := strings.Cut(tl, " ")
		if name == FieldReplyTo {
			r.ReplyTo = "" // a prefix of a key name could name another inbox
		}
		return fmt.Errorf("%w: field %q of %s bytes exceeds the replica's limit", ErrMalformed, name, size)
	}
	if f.hasVersion && f.version != ProtocolVersion {
		return fmt.Errorf("%w: protocol version %q, want %q", ErrMalformed, f.version, ProtocolVersion)
	}
	if dl := f.deadline; dl != "" {
		ms, err := strconv.ParseInt(dl, 10, 64)
		if err != nil || ms <= 0 {
			return fmt.Errorf("%w: field %q is not unix milliseconds: %q", ErrMalformed, FieldDeadline, dl)
		}
		r.Deadline = time.UnixMilli(ms)
	}
	if r.ID == "" {
		return fmt.Errorf("%w: missing field %q", ErrMalformed, FieldID)
	}
	if r.Function == "" {
		return fmt.Errorf("%w: missing field %q", ErrMalformed, FieldFunction)
	}
	return nil
}

// Reply is the answer to one Call.
type Reply struct {
	ID      string // correlation id of the request
	Payload []byte // JSON result when Err is nil
	Err     *fnmesh.Error
	Replica string // replica that answered
	// Value is the function's Go result from a replica in the caller's
	// own process, set instead of Payload when the result's type survives
	// a JSON round trip unchanged (handlers.Service.Dispatch). It never
	// goes on the wire.
	Value any

	// Acks, if set, is the request message answered: SendReply acks it
	// with the reply (Bus.SendReply).
	Acks *message.Message
	// AcksRequest is Acks for a request from SubscribeRequests.
	AcksRequest *DeliveredRequest
}

type wireDetails struct {
	Fields []fnmesh.FieldViolation `json:"fields,omitempty"`
}

// Message encodes r as a watermill message.
func (r *Reply) Message() *message.Message {
	m := message.NewMessage(r.ID, nil)
	md := m.Metadata
	md[FieldID] = r.ID
	setIf(md, FieldReplica, r.Replica)
	if r.Err != nil {
		md[FieldCode] = string(r.Err.Code)
		md[FieldMessage] = r.Err.Message
		if len(r.Err.Fields) > 0 {
			b, _ := json.Marshal(wireDetails{Fields: r.Err.Fields})
			md[FieldDetails] = string(b)
		}
		return m
	}
	m.Payload = r.Payload
	return m
}

// DecodeReply reads a reply from m.
func DecodeReply(m *message.Message) (*Reply, error) {
	md := m.Metadata
	r := &Reply{ID: md[FieldID], Replica: md[FieldReplica]}
	if r.ID == "" {
		return r, fmt.Errorf("%w: reply without %q", ErrMalformed, FieldID)
	}
	if code := md[FieldCode]; code != "" {
		r.Err = &fnmesh.Error{Code: fnmesh.Code(code), Message: md[FieldMessage]}
		if det := md[FieldDetails]; det != "" {
			var d wireDetails
			if err := json.Unmarshal([]byte(det), &d); err == nil {
				r.Err.Fields = d.Fields
			}
		}
		return r, nil
	}
	r.Payload = m.Payload
	return r, nil
}

// DeadLetter is a request that was not (or could not be) run, recorded
// with the reason on the service's dead-letter topic.
type DeadLetter struct {
	EntryID  string            // id of the dead-letter entry itself
	Fields   map[string]string // the original request's fields
	Payload  []byte            // the original request's payload
	Reason   string
	Code     fnmesh.Code
	Attempts int
	Replica  string
	At       time.Time
	Origin   string // entry id of the original request, if known
}

// NewDeadLetterMessage builds the dead-letter message for the request m:
// its fields and payload, plus why it failed.
func NewDeadLetterMessage(m *message.Message, origin, replica string, code fnmesh.Code, reason string, attempts int) *message.Message {
	d := message.NewMessage(m.UUID, m.Payload)
	for k, v := range m.Metadata {
		d.Metadata[k] = v
	}
	d.Metadata[FieldReason] = reason
	d.Metadata[FieldCode] = string(code)
	d.Metadata[FieldAttempts] = strconv.Itoa(attempts)
	d.Metadata[FieldReplica] = replica
	d.Metadata[FieldAt] = strconv.FormatInt(time.Now().UnixMilli(), 10)
	setIf(d.Metadata, FieldEntry, origin)
	return d
}

// decodeDeadLetter is the inverse of NewDeadLetterMessage for a stored
// entry.
func decodeDeadLetter(entryID string, fields map[string]string, payload []byte) DeadLetter {
	d := DeadLetter{EntryID: entryID, Fields: map[string]string{}, Payload: payload}
	for k, v := range fields {
		switch k {
		case FieldReason:
			d.Reason = v
		case FieldCode:
			d.Code = fnmesh.Code(v)
		case FieldAttempts:
			d.Attempts, _ = strconv.Atoi(v)
		case FieldReplica:
			d.Replica = v
		case FieldAt:
			if ms, err := strconv.ParseInt(v, 10, 64); err == nil {
				d.At = time.UnixMilli(ms)
			}
		case FieldEntry:
			d.Origin = v
		default:
			d.Fields[k] = v
		}
	}
	return d
}

// bytesOf returns s's bytes without copying: for payloads that are only
// read (decoded), never written.
func bytesOf(s string) []byte {
	if s == "" {
		return nil
	}
	return unsafe.Slice(unsafe.StringData(s), len(s))
}
