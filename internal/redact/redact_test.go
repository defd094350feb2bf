package redact

import (
	"strings"
	"testing"
)

func TestURLHidesPasswordsAndTokens(t *testing.T) {
	cases := map[string]string{
		"redis://alice:hunter2-secret@127.0.0.1:6379/0":                           "redis://alice:xxxxx@127.0.0.1:6379/0",
		"rediss://:hunter2-secret@h:6380":                                         "rediss://:xxxxx@h:6380",
		"redis+sentinel://h:26379?master_name=m&sentinel_password=hunter2-secret": "redis+sentinel://h:26379?master_name=m&sentinel_password=xxxxx",
		"redis://h:6379?token=hunter2-secret":                                     "redis://h:6379?token=xxxxx",
		"redis://127.0.0.1:6379":                                                  "redis://127.0.0.1:6379",
		"redis://user@h:1":                                                        "redis://user@h:1",
		"redis://u:hunter2-secret@h:1/%zz":                                        "(unparsable URL)",
		"":                                                                        "",
	}
	for in, want := range cases {
		got := URL(in)
		if got != want {
			t.Errorf("URL(%q) = %q, want %q", in, got, want)
		}
		if strings.Contains(got, "hunter2") {
			t.Errorf("URL(%q) = %q shows the password", in, got)
		}
	}
}
