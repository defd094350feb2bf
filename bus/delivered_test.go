package bus

import (
	"fmt"
	"github.com/fnmesh/fnmesh/internal/wire"
	"reflect"
	"strings"
	"testing"
	"time"
)

// FuzzDecodeRequestEntry: a request decoded straight from a stream wire.Entry
// is the request DecodeRequestInto reads from the entry's message, error
// included, whatever the fields (repeated, unknown, cut short, empty).
func FuzzDecodeRequestEntry(f *testing.F) {
	f.Add("v=1\nid=a\nfn=add\nrt=fnmesh:reply:{x}\ndl=1700000000000\np={\"a\":1}", "")
	f.Add("id=a\nfn=add\nrt=other\ntok=t\nfrom=c\ntp=00-1\nik=k", "")
	f.Add("v=2\nid=a\nfn=add", "")
	f.Add("id=a\nfn=add\ndl=x\nid=b\np=1\np=2", "")
	f.Add("id=a\nfn=add\nrt=fnmesh:reply:{x}", "rt 9999")
	f.Add("id=a\nfn=add\ntoo_large=p 10", "")
	f.Add("fn=add\nv=", "")
	f.Fuzz(func(t *testing.T, fields, tooLarge string) {
		var kv []string
		for _, line := range strings.Split(fields, "\n") {
			k, v, _ := strings.Cut(line, "=")
			kv = append(kv, k, v)
		}
		e := wire.NewEntry("1-1", kv...)
		e.TooLarge = tooLarge
		var direct, viaMessage Request
		errDirect := decodeRequestEntry(e, &direct)
		errMessage := DecodeRequestInto(messageOf(e), &viaMessage)
		if fmt.Sprint(errDirect) != fmt.Sprint(errMessage) {
			t.Fatalf("error %v, through a message %v", errDirect, errMessage)
		}
		if !reflect.DeepEqual(direct, viaMessage) {
			t.Fatalf("request %+v, through a message %+v", direct, viaMessage)
		}
	})
}

// A request the in-memory bus stored as given decodes as it would from
// its message: deadline to the millisecond, the same checks.
func TestDecodeSentRequest(t *testing.T) {
	dl := time.Now().Add(time.Minute)
	for _, r := range []Request{
		{ID: "a", Function: "add", Payload: []byte(`{"a":1}`), ReplyTo: ReplyTopic("x"), Deadline: dl,
			Token: "t", Caller: "c", TraceParent: "tp", IdempotencyKey: "k", Value: 1, Failed: func(error) {}},
		{ID: "a", Function: "add"},
		{ID: "a", Function: "add", ReplyTo: "fnmesh:{svc}:req"},
		{Function: "add"},
		{ID: "a"},
	} {
		var sent, viaMessage Request
		errSent := decodeSentRequest(&r, &sent)
		errMessage := DecodeRequestInto(r.Message(), &viaMessage)
		if fmt.Sprint(errSent) != fmt.Sprint(errMessage) {
			t.Fatalf("%+v: error %v, through a message %v", r, errSent, errMessage)
		}
		if !reflect.DeepEqual(sent, viaMessage) {
			t.Fatalf("request %+v, through a message %+v", sent, viaMessage)
		}
	}
}
