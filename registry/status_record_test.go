package registry

import (
	"encoding/json"
	"testing"
	"time"
)

// A record is valid JSON that reads as statusRecord marshals, whatever its
// strings hold (invalid UTF-8 becomes U+FFFD), and back as its status.
func TestStatusRecordIsJSON(t *testing.T) {
	at := time.UnixMilli(1764644000123)
	for _, reason := range []string{
		"plain", `quote " and backslash \`, "newline\nand tab\t", "ünïcødé and \u2028", "bad utf-8 \xff\xfe", "<html>&", "\x00\x1f\x7f", "",
	} {
		w := statusWrite{id: "r", at: at, st: Status{ID: "r", State: StateDeadLettered, Service: "math", Function: "add@v2",
			Replica: "host-1-a", Attempt: 3, Code: "invalid_argument", Reason: reason}}
		got := w.appendRecord(nil)
		want, err := json.Marshal(statusRecord{State: StateDeadLettered, Service: "math", Function: "add@v2", Replica: "host-1-a",
			Attempt: 3, Code: "invalid_argument", Reason: reason, Updated: at.UnixMilli()})
		if err != nil {
			t.Fatal(err)
		}
		var gotRec, wantRec statusRecord
		if !json.Valid(got) || json.Unmarshal(got, &gotRec) != nil || json.Unmarshal(want, &wantRec) != nil || gotRec != wantRec {
			t.Errorf("reason %q:\n got %s\nwant %s", reason, got, want)
		}
		st, err := parseRecord(got)
		if err != nil {
			t.Fatalf("reason %q: %v", reason, err)
		}
		if st.State != StateDeadLettered || st.Attempt != 3 || st.Replica != "host-1-a" || st.Reason != wantRec.Reason || !st.Updated.Equal(at) {
			t.Errorf("reason %q: read back %+v", reason, st)
		}
	}
	q := statusWrite{id: "r", queued: true, service: "math", function: "add", at: at}
	if got, want := string(q.appendRecord(nil)), `{"state":"queued","service":"math","function":"add","updated":1764644000123}`; got != want {
		t.Errorf("queued record %s, want %s", got, want)
	}
}
