package wire

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"unsafe"

	"github.com/redis/go-redis/v9"
)

// Stream replies read raw. go-redis parses each stream entry into a
// map[string]interface{} of fresh strings, about twenty allocations per
// entry: the largest single cost of a call. The blocking readers instead
// take the reply's RESP bytes (DoRaw, one buffer) and read entries out of
// it with the small parser below; entry ids, fields and payloads point
// into that buffer, which their messages keep alive.

// Entry is one stream entry: its id, and its fields and values in order
// as the RESP bulk strings they came in, read when needed (Each): no slice
// of strings per entry.
type Entry struct {
	ID     string
	fields []byte // name, value, name, value... as RESP bulk strings
	n      int    // fields and values in fields
	Gone   bool   // a pending entry whose data was trimmed away
	// TooLarge, "NAME SIZE", names a field cut short by the reader
	// (ReadRawReplyMax).
	TooLarge string
}

// Each calls f with each field and value, strings that share the reply's
// memory.
func (e Entry) Each(f func(name, value string) bool) {
	r := reader{b: e.fields}
	for i := 0; i+1 < e.n; i += 2 {
		k, _, err1 := r.bulk()
		v, _, err2 := r.bulk()
		if err1 != nil || err2 != nil || !f(k, v) {
			return
		}
	}
}

func (e Entry) Get(name string) (value string, found bool) {
	e.Each(func(k, v string) bool {
		if k == name {
			value, found = v, true
			return false
		}
		return true
	})
	return value, found
}

// NewEntry makes an entry of its id and its fields and values in order.
func NewEntry(id string, fieldsAndValues ...string) Entry {
	var c Cmd
	for _, s := range fieldsAndValues {
		c.Arg(s)
	}
	return Entry{ID: id, fields: c.b, n: c.n}
}

// FromXMessage makes an entry of a message go-redis parsed (reads through
// go-redis, where a wire.Conn cannot repeat a client's set-up).
func FromXMessage(x redis.XMessage) Entry {
	e := Entry{ID: x.ID, Gone: x.Values == nil}
	var c Cmd
	for k, v := range x.Values {
		s, _ := v.(string)
		c.Arg(k)
		c.Arg(s)
	}
	e.fields, e.n = c.b, c.n
	return e
}

// ErrRESP is wrapped by every parse error.
var ErrRESP = errors.New("bus: unexpected stream reply")

// ParseStreamReply reads an XREAD or XREADGROUP reply (RESP2) for one
// Stream. A nil reply (the block timed out, or CLIENT UNBLOCK) returns
// redis.Nil; an error reply returns it as a redis error.
func ParseStreamReply(raw []byte) ([]Entry, error) {
	r := reader{b: raw}
	n, err := r.arrayLen()
	if err != nil {
		return nil, err
	}
	if n <= 0 {
		return nil, redis.Nil
	}
	var out []Entry
	for s := 0; s < n; s++ {
		if k, err := r.arrayLen(); err != nil || k != 2 {
			return nil, r.fail("stream pair", err)
		}
		if _, _, err := r.bulk(); err != nil { // the key
			return nil, err
		}
		if out, err = r.entries(out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ParseAutoClaimReply reads an XAUTOCLAIM reply (RESP2: the next cursor,
// the entries taken over as XREADGROUP returns them, the ids of entries
// deleted meanwhile); an error reply returns it as a redis error.
func ParseAutoClaimReply(raw []byte) (entries []Entry, next string, err error) {
	r := reader{b: raw}
	n, err := r.arrayLen()
	if err != nil {
		return nil, "", err
	}
	if n < 2 {
		return nil, "", r.fail("XAUTOCLAIM reply", nil)
	}
	if next, _, err = r.bulk(); err != nil {
		return nil, "", err
	}
	if entries, err = r.entries(nil); err != nil {
		return nil, "", err
	}
	return entries, next, nil
}

// entries appends to out the entries of an array of [id, fields] pairs.
// A pair that is a null (XAUTOCLAIM on Redis 6.2: an entry deleted
// meanwhile) is skipped.
func (r *reader) entries(out []Entry) ([]Entry, error) {
	m, err := r.arrayLen()
	if err != nil {
		return nil, err
	}
	if out == nil && m > 0 {
		out = make([]Entry, 0, m)
	}
	for i := 0; i < m; i++ {
		k, err := r.arrayLen()
		if k < 0 && err == nil {
			continue
		}
		if err != nil || k != 2 {
			return nil, r.fail("entry pair", err)
		}
		id, _, err := r.bulk()
		if err != nil {
			return nil, err
		}
		f, err := r.arrayLen()
		if err != nil {
			return nil, err
		}
		e := Entry{ID: id}
		if f < 0 {
			e.Gone = true
		} else {
			start := r.i
			name := ""
			for j := 0; j < f; j++ {
				s, _, size, err := r.bulkSized()
				if err != nil {
					return nil, err
				}
				if j%2 == 0 {
					name = s
				} else if size >= 0 && e.TooLarge == "" {
					e.TooLarge = name + " " + strconv.Itoa(size)
				}
			}
			e.fields, e.n = r.b[start:r.i:r.i], f
		}
		out = append(out, e)
	}
	return out, nil
}

// ServerError is an error reply of the server (e.g. NOGROUP); it is a
// redis.Error, as go-redis's own are.
type ServerError string

func (e ServerError) Error() string { return string(e) }

// RedisError marks ServerError as a redis.Error.
func (ServerError) RedisError() {}

var _ redis.Error = ServerError("")

type reader struct {
	b []byte
	i int
}

func (r *reader) fail(what string, err error) error {
	if err != nil {
		return err
	}
	return fmt.Errorf("%w: bad %s at byte %d", ErrRESP, what, r.i)
}

// line returns the type byte and the rest of the next line.
func (r *reader) line() (byte, []byte, error) {
	start := r.i
	for j := start; j+1 < len(r.b); j++ {
		if r.b[j] == '\r' && r.b[j+1] == '\n' {
			if j == start {
				return 0, nil, r.fail("empty line", nil)
			}
			r.i = j + 2
			return r.b[start], r.b[start+1 : j], nil
		}
	}
	return 0, nil, r.fail("line", nil)
}

// arrayLen reads an array header; -1 for a nil array.
func (r *reader) arrayLen() (int, error) {
	t, l, err := r.line()
	if err != nil {
		return 0, err
	}
	switch t {
	case '*':
		n, ok := atoi(l)
		if !ok || n < -1 || n > len(r.b) {
			return 0, r.fail("array length", nil)
		}
		return n, nil
	case '_': // RESP3 null
		return -1, nil
	case '-':
		return 0, ServerError(string(l))
	}
	return 0, r.fail("array", nil)
}

// bulk reads a bulk string as a string that shares the reply's memory.
func (r *reader) bulk() (string, bool, error) {
	s, isNil, _, err := r.bulkSized()
	return s, isNil, err
}

// bulkSized is bulk that also returns the size of a bulk string
// ReadRawReplyMax cut short ("$KEPT;SIZE"), or -1.
func (r *reader) bulkSized() (string, bool, int, error) {
	t, l, err := r.line()
	if err != nil {
		return "", false, -1, err
	}
	size := -1
	if head, total, cut := bytes.Cut(l, []byte(";")); cut && t == '$' {
		n, ok := atoi(total)
		if !ok || n < 0 {
			return "", false, -1, r.fail("bulk size", nil)
		}
		l, size = head, n
	}
	s, isNil, err := r.bulkBody(t, l)
	return s, isNil, size, err
}

func (r *reader) bulkBody(t byte, l []byte) (string, bool, error) {
	if t != '$' {
		if t == '-' {
			return "", false, ServerError(string(l))
		}
		return "", false, r.fail("bulk string", nil)
	}
	n, ok := atoi(l)
	if !ok || n < -1 {
		return "", false, r.fail("bulk length", nil)
	}
	if n == -1 {
		return "", true, nil
	}
	if n > len(r.b)-r.i-2 || r.b[r.i+n] != '\r' || r.b[r.i+n+1] != '\n' {
		return "", false, r.fail("bulk string", nil)
	}
	s := ""
	if n > 0 {
		s = unsafe.String(&r.b[r.i], n)
	}
	r.i += n + 2
	return s, false, nil
}

// atoi reads a RESP length: digits, or -1. No string, no allocation.
func atoi(b []byte) (int, bool) {
	if len(b) == 2 && b[0] == '-' && b[1] == '1' {
		return -1, true
	}
	if len(b) == 0 || len(b) > 10 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// Cmd is a command encoded as RESP (an array of bulk strings) by the
// goroutine that makes it: no boxed arguments, no command object. The
// bus writes it as it is to a connection of its own (Conn), or,
// on a cluster, hands its arguments to go-redis (args).
type Cmd struct {
	b []byte // headRoom bytes for the array header, then the arguments
	n int    // arguments so far
}

// headRoom fits any array header: "*", up to 9 digits, CRLF.
const headRoom = 12

func (c *Cmd) Reset() {
	c.b = append(c.b[:0], "            "...)
	c.n = 0
}

// Arg appends one argument.
func (c *Cmd) Arg(s string) {
	c.b = append(c.b, '$')
	c.b = strconv.AppendInt(c.b, int64(len(s)), 10)
	c.b = append(c.b, '\r', '\n')
	c.b = append(c.b, s...)
	c.b = append(c.b, '\r', '\n')
	c.n++
}

// ArgConcat appends one argument made of parts, without making it.
func (c *Cmd) ArgConcat(parts ...string) {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	c.b = append(c.b, '$')
	c.b = strconv.AppendInt(c.b, int64(n), 10)
	c.b = append(c.b, '\r', '\n')
	for _, p := range parts {
		c.b = append(c.b, p...)
	}
	c.b = append(c.b, '\r', '\n')
	c.n++
}

func (c *Cmd) ArgBytes(p []byte) { c.Arg(unsafe.String(unsafe.SliceData(p), len(p))) }

// ArgInt appends an integer argument without making a string of it.
func (c *Cmd) ArgInt(i int64) {
	var d [20]byte
	c.ArgBytes(strconv.AppendInt(d[:0], i, 10))
}

// ArgAny appends a string, []byte or integer argument.
func (c *Cmd) ArgAny(v any) {
	switch v := v.(type) {
	case string:
		c.Arg(v)
	case []byte:
		c.ArgBytes(v)
	case int64:
		c.ArgInt(v)
	case int:
		c.ArgInt(int64(v))
	default:
		c.Arg(fmt.Sprint(v))
	}
}

// Stream returns the command's second argument (an XADD's key), for
// error messages.
func (c *Cmd) Stream() string {
	r := reader{b: c.b[headRoom:]}
	r.bulk()
	s, _, _ := r.bulk()
	return string(s)
}

// Shrink forgets c's buffer if it grew above max bytes: a pooled command
// does not keep a large payload's buffer.
func (c *Cmd) Shrink(max int) {
	if cap(c.b) > max {
		c.b = nil
	}
}

// Bytes returns the encoded command, writing its array header into the
// room left for it.
func (c *Cmd) Bytes() []byte {
	var h [headRoom]byte
	head := strconv.AppendInt(append(h[:0], '*'), int64(c.n), 10)
	head = append(head, '\r', '\n')
	start := headRoom - len(head)
	copy(c.b[start:], head)
	return c.b[start:]
}

// Args returns the command's arguments, for go-redis (a cluster, which
// routes each command by its key, or NoAutoPipeline). The strings share
// c's buffer: use them before c is reset.
func (c *Cmd) Args() []any {
	out := make([]any, 0, c.n)
	r := reader{b: c.b[headRoom:]}
	for i := 0; i < c.n; i++ {
		s, _, err := r.bulk()
		if err != nil {
			panic("bus: Cmd does not parse: " + err.Error())
		}
		out = append(out, s)
	}
	return out
}

// Bounds on what a server may declare. A reply is read only as its bytes
// arrive: no buffer is sized from a declared length beyond chunkSize, so
// a faulty server, or anyone in the path of a plain redis:// connection,
// cannot make the process allocate what it has not sent.
const (
	// MaxBulkLen is Redis's own limit on a bulk string
	// (proto-max-bulk-len, 512 MB).
	MaxBulkLen = 512 << 20
	// maxAggregateLen bounds an array's (map's, set's) element count:
	// Redis's limit on a multibulk request.
	maxAggregateLen = 1 << 30
	// maxDepth bounds how deeply replies nest (a stream read nests five
	// deep): the readers recurse once per level.
	maxDepth = 64
	// chunkSize is the most a reader allocates ahead of bytes received.
	chunkSize = 64 << 10
	// MaxErrorLen bounds what is kept of a blob error's text.
	MaxErrorLen = 4 << 10
	// TooLargePrefix is how much of a bulk string above a reader's limit
	// is kept (ReadRawReplyMax).
	TooLargePrefix = 4 << 10
)

// errTooDeep: a reply nests deeper than maxDepth.
var errTooDeep = fmt.Errorf("%w: replies nested deeper than %d", ErrRESP, maxDepth)

// respHeader reads a reply's first line, its CRLF included: its type t,
// the text after the type, and n: a bulk string's length, an aggregate's
// element count (a map's or an attribute's pairs counted twice), -1 for a
// null, 0 for a simple reply.
func respHeader(line []byte) (t byte, n int, body []byte, err error) {
	if len(line) < 3 || line[len(line)-2] != '\r' || line[len(line)-1] != '\n' {
		return 0, 0, nil, fmt.Errorf("%w: bad reply line %q", ErrRESP, line)
	}
	t, body = line[0], line[1:len(line)-2]
	switch t {
	case '+', '-', ':', ',', '#', '(':
		return t, 0, body, nil
	case '_':
		return t, -1, body, nil
	case '$', '!', '=', '*', '~', '>', '%', '|':
		n, ok := atoi(body)
		if !ok {
			return 0, 0, nil, fmt.Errorf("%w: bad length %q", ErrRESP, body)
		}
		if isBulk(t) && n > MaxBulkLen {
			return 0, 0, nil, fmt.Errorf("%w: bulk length %d above %d", ErrRESP, n, MaxBulkLen)
		}
		if !isBulk(t) && n > maxAggregateLen {
			return 0, 0, nil, fmt.Errorf("%w: aggregate length %d above %d", ErrRESP, n, maxAggregateLen)
		}
		if n > 0 && (t == '%' || t == '|') {
			n *= 2
		}
		return t, n, body, nil
	}
	return 0, 0, nil, fmt.Errorf("%w: unknown reply type %q", ErrRESP, t)
}

// isBulk reports whether t is a bulk string's type (its length follows
// in n; an aggregate's n counts replies).
func isBulk(t byte) bool { return t == '$' || t == '!' || t == '=' }

// ReadReplyErr reads one reply from br and returns what the combiner
// needs of it: replyErr is the server's error reply (ServerError), or
// redis.Nil for a null; err is a failure to read (the connection is
// unusable). Arrays and maps are read to their end and dropped.
func ReadReplyErr(br *bufio.Reader) (replyErr, err error) {
	return readReplyErrAt(br, 0)
}

func readReplyErrAt(br *bufio.Reader, depth int) (replyErr, err error) {
	if depth > maxDepth {
		return nil, errTooDeep
	}
	line, err := br.ReadSlice('\n')
	if err != nil {
		return nil, err
	}
	t, n, body, err := respHeader(line)
	switch {
	case err != nil:
		return nil, err
	case t == '-':
		return ServerError(string(body)), nil
	case n < 0:
		return redis.Nil, nil
	case t == '!':
		keep := min(n, MaxErrorLen)
		msg := make([]byte, keep)
		if _, err := io.ReadFull(br, msg); err != nil {
			return nil, err
		}
		if _, err := br.Discard(n - keep); err != nil {
			return nil, err
		}
		return ServerError(msg), readCRLF(br)
	case isBulk(t):
		if _, err := br.Discard(n); err != nil {
			return nil, err
		}
		return nil, readCRLF(br)
	}
	for i := 0; i < n; i++ {
		if _, err := readReplyErrAt(br, depth+1); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

// errTooLarge: respEnd met a bulk string above its limit; the reply is
// read with appendReply, which skips its bytes.
var errTooLarge = errors.New("bus: bulk string above the limit")

// readCRLF reads the CRLF that ends a bulk string.
func readCRLF(br *bufio.Reader) error {
	var crlf [2]byte
	if _, err := io.ReadFull(br, crlf[:]); err != nil {
		return err
	}
	if crlf != [2]byte{'\r', '\n'} {
		return fmt.Errorf("%w: bulk string not ended by CRLF", ErrRESP)
	}
	return nil
}

// errIncomplete: respEnd needs more bytes.
var errIncomplete = errors.New("bus: incomplete reply")

// respEnd returns where the reply that starts at b[i] ends, or
// errIncomplete if b stops before.
func respEnd(b []byte, i int) (int, error) {
	return respEndAt(b, i, 0, MaxBulkLen)
}

// respEndAt is respEnd at nesting depth; a bulk string longer than
// maxField is errTooLarge.
func respEndAt(b []byte, i, depth, maxField int) (int, error) {
	if depth > maxDepth {
		return 0, errTooDeep
	}
	j := bytes.IndexByte(b[i:], '\n')
	if j < 0 {
		return 0, errIncomplete
	}
	next := i + j + 1
	t, n, _, err := respHeader(b[i:next])
	switch {
	case err != nil:
		return 0, err
	case n < 0:
		return next, nil
	case isBulk(t) && n > maxField:
		return 0, errTooLarge
	case isBulk(t):
		end := next + n + 2
		if end > len(b) {
			return 0, errIncomplete
		}
		if b[end-2] != '\r' || b[end-1] != '\n' {
			return 0, fmt.Errorf("%w: bulk string at byte %d not ended by CRLF", ErrRESP, i)
		}
		return end, nil
	}
	for k := 0; k < n; k++ {
		if next, err = respEndAt(b, next, depth+1, maxField); err != nil {
			return 0, err
		}
	}
	return next, nil
}

// ReadRawReply reads one whole reply from r into a buffer of its own,
// allocated once at its size (go-redis's raw reads grow one, about a
// quarter of the bytes a call allocated). It reads nothing past the
// reply.
func ReadRawReply(r *bufio.Reader) ([]byte, error) {
	return ReadRawReplyMax(r, MaxBulkLen)
}

// ReadRawReplyMax is ReadRawReply that reads no bulk string longer than
// maxField: it keeps the first TooLargePrefix bytes of one, skips the
// rest as it arrives, and writes its header as "$KEPT;SIZE" (which only
// reader.bulk reads).
func ReadRawReplyMax(r *bufio.Reader, maxField int) ([]byte, error) {
	for {
		buf, _ := r.Peek(r.Buffered())
		end, err := respEndAt(buf, 0, 0, maxField)
		if err == nil {
			out := make([]byte, end)
			copy(out, buf)
			r.Discard(end)
			return out, nil
		}
		if err == errTooLarge {
			return appendReply(r, make([]byte, 0, r.Size()), 0, maxField)
		}
		if err != errIncomplete {
			return nil, err
		}
		if r.Buffered() == r.Size() {
			return appendReply(r, make([]byte, 0, 2*r.Size()), 0, maxField)
		}
		if _, err := r.Peek(r.Buffered() + 1); err != nil {
			return nil, err
		}
	}
}

// appendReply reads a reply longer than r's buffer, line by line and
// bulk string by bulk string, skipping what a bulk string holds past
// maxField (ReadRawReplyMax).
func appendReply(r *bufio.Reader, out []byte, depth, maxField int) ([]byte, error) {
	if depth > maxDepth {
		return nil, errTooDeep
	}
	line, err := r.ReadSlice('\n')
	if err != nil {
		return nil, err
	}
	t, n, _, err := respHeader(line)
	if err != nil {
		return nil, err
	}
	switch {
	case isBulk(t) && n > maxField:
		keep := min(n, TooLargePrefix)
		out = append(out, '$')
		out = strconv.AppendInt(out, int64(keep), 10)
		out = append(out, ';')
		out = strconv.AppendInt(out, int64(n), 10)
		out = append(out, '\r', '\n')
		if out, err = appendBytes(r, out, keep); err != nil {
			return nil, err
		}
		if _, err := r.Discard(n - keep); err != nil {
			return nil, err
		}
		if err := readCRLF(r); err != nil {
			return nil, err
		}
		return append(out, '\r', '\n'), nil
	}
	out = append(out, line...)
	switch {
	case n < 0:
	case isBulk(t):
		if out, err = appendBytes(r, out, n+2); err != nil {
			return nil, err
		}
		if out[len(out)-2] != '\r' || out[len(out)-1] != '\n' {
			return nil, fmt.Errorf("%w: bulk string not ended by CRLF", ErrRESP)
		}
	default:
		for k := 0; k < n; k++ {
			if out, err = appendReply(r, out, depth+1, maxField); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// appendBytes appends the next n bytes of r to out, growing out at most
// chunkSize ahead of the bytes read.
func appendBytes(r *bufio.Reader, out []byte, n int) ([]byte, error) {
	for n > 0 {
		k := min(n, chunkSize)
		out = slices.Grow(out, k)
		if _, err := io.ReadFull(r, out[len(out):len(out)+k]); err != nil {
			return nil, err
		}
		out = out[:len(out)+k]
		n -= k
	}
	return out, nil
}
