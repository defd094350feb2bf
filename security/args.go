package security

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxArgsDepth bounds the nesting of arguments a rule decodes, as
// encoding/json bounds it.
const maxArgsDepth = 10000

// maxExactInteger is the largest integer every reader of the arguments
// (a float64, a JavaScript number) holds exactly: 2^53.
const maxExactInteger = 1 << 53

// errInexact marks a number a rule could only compare approximately.
var errInexact = errors.New("number would lose precision")

// DecodeArgs decodes a call's JSON arguments for a rule, so that the rule
// reads them as the function does, or refuses them:
//
//   - an object with two keys that encoding/json takes for one field
//     (the same key twice, or two keys equal but for case, which
//     encoding/json matches to a struct field case-insensitively, the last
//     one winning) is an error;
//   - numbers stay json.Number; a rule that reads an integer beyond ±2^53,
//     which a float64 cannot hold, fails (see Decide) instead of comparing
//     a rounded value.
//
// Objects decode as map[string]any, arrays as []any. A rule's "args."
// path then matches an object's key as encoding/json matches a field:
// exactly, else case-insensitively.
func DecodeArgs(data []byte) (any, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return map[string]any{}, nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := readArg(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the arguments' JSON value")
	}
	return v, nil
}

func readArg(dec *json.Decoder, depth int) (any, error) {
	if depth > maxArgsDepth {
		return nil, fmt.Errorf("arguments nest deeper than %d", maxArgsDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return tok, nil // string, json.Number, bool or nil
	}
	switch d {
	case '[':
		list := []any{}
		for dec.More() {
			v, err := readArg(dec, depth+1)
			if err != nil {
				return nil, err
			}
			list = append(list, v)
		}
		_, err := dec.Token() // ']'
		return list, err
	case '{':
		obj := map[string]any{}
		folded := map[string]string{}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return nil, err
			}
			key, _ := tok.(string)
			f := foldKey(key)
			if prev, dup := folded[f]; dup {
				if prev == key {
					return nil, fmt.Errorf("key %q appears twice in one object", key)
				}
				return nil, fmt.Errorf("keys %q and %q differ only in case: a function reads them as one field", prev, key)
			}
			folded[f] = key
			v, err := readArg(dec, depth+1)
			if err != nil {
				return nil, err
			}
			obj[key] = v
		}
		_, err := dec.Token() // '}'
		return obj, err
	}
	return nil, fmt.Errorf("unexpected %v in arguments", d)
}

// foldKey folds a key as encoding/json does when it matches a field name:
// two keys fold alike when bytes.EqualFold holds.
func foldKey(key string) string {
	var b strings.Builder
	for _, r := range key {
		if r < utf8.RuneSelf {
			if 'a' <= r && r <= 'z' {
				r -= 'a' - 'A'
			}
			b.WriteRune(r)
			continue
		}
		b.WriteRune(unicode.ToUpper(unicode.ToLower(r)))
	}
	return b.String()
}

// lookupKey finds key in an arguments object as encoding/json finds a
// struct field: the exact key, else the one key that equals it but for
// case (DecodeArgs refuses objects with more than one).
func lookupKey(obj map[string]any, key string) (any, bool) {
	if v, ok := obj[key]; ok {
		return v, true
	}
	want := foldKey(key)
	for k, v := range obj {
		if foldKey(k) == want {
			return v, true
		}
	}
	return nil, false
}

// numberValue turns a JSON number into the float64 rules compare, or
// fails when that float64 would differ from what an integer field of
// the function receives.
func numberValue(n json.Number) (any, error) {
	s := string(n)
	if strings.ContainsAny(s, ".eE") {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: %s is out of range", errInexact, s)
		}
		return f, nil
	}
	i, err := strconv.ParseInt(s, 10, 64)
	if err != nil || i > maxExactInteger || i < -maxExactInteger {
		return nil, fmt.Errorf("%w: integer %s is beyond ±2^53", errInexact, s)
	}
	return float64(i), nil
}
