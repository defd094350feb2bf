// Package jsondec decodes JSON as json.Unmarshal does, through pooled
// decoders. json.Unmarshal makes a decoder state, a scanner stack and an
// error-context stack for every value it decodes: about ten of the forty
// allocations of a call (arguments on the replica, the result on the
// caller). A json.Decoder keeps all three from one value to the next.
package jsondec

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"sync"
)

// source is a resettable reader of one value's bytes.
type source struct {
	b []byte
	i int
}

func (s *source) Read(p []byte) (int, error) {
	if s.i >= len(s.b) {
		return 0, io.EOF
	}
	n := copy(p, s.b[s.i:])
	s.i += n
	return n, nil
}

type decoder struct {
	src source
	dec *json.Decoder
	fed int64 // bytes given to dec before the value being decoded
}

var pool = sync.Pool{New: func() any {
	d := &decoder{}
	d.dec = json.NewDecoder(&d.src)
	return d
}}

// errEnd is json.Unmarshal's error for input that stops early.
var errEnd = errors.New("unexpected end of JSON input")

// errAfter is json.Unmarshal's error for data after the value.
var errAfter = errors.New("invalid character after top-level value")

// Unmarshal is json.Unmarshal(data, v): the same results and errors (but
// for the wording of some), no data allowed after the value.
func Unmarshal(data []byte, v any) error {
	d := pool.Get().(*decoder)
	d.src = source{b: data}
	err := d.dec.Decode(v)
	if err == nil {
		// dec reads one stream, all data given to it end to end.
		end := int(d.dec.InputOffset() - d.fed)
		if len(bytes.TrimLeft(data[end:], " \t\r\n")) > 0 {
			err = errAfter
		}
	}
	d.fed += int64(len(data))
	d.src = source{} // do not keep data alive
	if err != nil {
		// A decoder that failed keeps its error, and may hold unread
		// bytes: the next value gets a new one.
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = errEnd
		}
		return err
	}
	pool.Put(d)
	return nil
}
