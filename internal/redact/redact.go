// Package redact hides secrets in what the commands log and print:
// passwords and tokens in URLs.
package redact

import (
	"net/url"
	"strings"
)

// Mask replaces a secret.
const Mask = "xxxxx"

// URL returns s with its password and any secret query parameter
// (password, token, secret and the like) replaced by Mask. A string that
// does not parse as a URL is not shown at all: it may hold a secret in
// a form this function does not recognize.
func URL(s string) string {
	if s == "" {
		return ""
	}
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	if u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), Mask)
		}
	}
	if u.RawQuery != "" {
		q := u.Query()
		for k := range q {
			if secretName(k) {
				for i := range q[k] {
					q[k][i] = Mask
				}
			}
		}
		u.RawQuery = q.Encode()
	}
	return u.String()
}

func secretName(k string) bool {
	k = strings.ToLower(k)
	for _, s := range []string{"pass", "token", "secret", "key", "auth"} {
		if strings.Contains(k, s) {
			return true
		}
	}
	return false
}
