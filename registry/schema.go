package registry

import (
	"encoding"
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/go-playground/validator/v10"
)

// Schema returns the JSON Schema (draft 2020-12) of t as encoding/json
// writes and reads it: field names from json tags, omitempty fields not
// required, embedded structs flattened. Validator rules (`validate`
// tags) become keywords: required, gte/lte/min/max/gt/lt/len as
// minimum/maximum/minLength/maxLength/minItems/maxItems, oneof as enum,
// email/url/uuid/hostname/ip as format; every field's full rule is also
// kept under "x-validate".
func Schema(t reflect.Type) json.RawMessage {
	s := schemaOf(t, map[reflect.Type]bool{})
	s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
	b, _ := json.Marshal(s) // maps: keys sorted, output stable
	return b
}

type obj = map[string]any

var (
	timeType          = reflect.TypeFor[time.Time]()
	rawType           = reflect.TypeFor[json.RawMessage]()
	jsonMarshalerType = reflect.TypeFor[json.Marshaler]()
	textMarshalerType = reflect.TypeFor[encoding.TextMarshaler]()
)

func schemaOf(t reflect.Type, seen map[reflect.Type]bool) obj {
	if t == nil {
		return obj{}
	}
	switch t {
	case timeType:
		return obj{"type": "string", "format": "date-time"}
	case rawType:
		return obj{}
	}
	if t.Kind() != reflect.Pointer && t.Kind() != reflect.Interface {
		if t.Implements(jsonMarshalerType) || reflect.PointerTo(t).Implements(jsonMarshalerType) {
			return obj{"x-go-type": t.String()} // encodes itself: any JSON
		}
		if t.Implements(textMarshalerType) || reflect.PointerTo(t).Implements(textMarshalerType) {
			return obj{"type": "string", "x-go-type": t.String()}
		}
	}
	switch t.Kind() {
	case reflect.Pointer:
		return schemaOf(t.Elem(), seen)
	case reflect.Bool:
		return obj{"type": "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return obj{"type": "integer"}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return obj{"type": "integer", "minimum": 0}
	case reflect.Float32, reflect.Float64:
		return obj{"type": "number"}
	case reflect.String:
		return obj{"type": "string"}
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 && t.Kind() == reflect.Slice {
			return obj{"type": "string", "contentEncoding": "base64"}
		}
		s := obj{"type": "array", "items": schemaOf(t.Elem(), seen)}
		if t.Kind() == reflect.Array {
			s["minItems"], s["maxItems"] = t.Len(), t.Len()
		}
		return s
	case reflect.Map:
		return obj{"type": "object", "additionalProperties": schemaOf(t.Elem(), seen)}
	case reflect.Struct:
		if seen[t] {
			return obj{"x-go-type": t.String(), "$comment": "recursive type"}
		}
		seen[t] = true
		defer delete(seen, t)
		props, required := obj{}, []string{}
		structFields(t, seen, props, &required)
		s := obj{"type": "object", "properties": props}
		if len(required) > 0 {
			s["required"] = required
		}
		if t.Name() != "" {
			s["title"] = t.Name()
		}
		return s
	}
	return obj{} // interfaces: any JSON
}

func structFields(t reflect.Type, seen map[reflect.Type]bool, props obj, required *[]string) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		ft := f.Type
		if f.Anonymous && name == "" {
			et := ft
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct {
				structFields(et, seen, props, required)
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		var s obj
		if hasOpt(opts, "string") && isScalar(ft) {
			s = obj{"type": "string"}
		} else {
			s = schemaOf(ft, seen)
		}
		if rules := f.Tag.Get("validate"); rules != "" && rules != "-" {
			// A field whose zero value fails its rules must be sent: an
			// absent field decodes to the zero value, which the replica
			// refuses (e.g. validate:"ne=0").
			if applyRules(s, ft, rules) || zeroFails(ft, rules) {
				*required = append(*required, name)
			}
		}
		props[name] = s
	}
}

func hasOpt(opts, want string) bool {
	for _, o := range strings.Split(opts, ",") {
		if o == want {
			return true
		}
	}
	return false
}

func isScalar(t reflect.Type) bool {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Bool, reflect.String, reflect.Float32, reflect.Float64,
		reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return false
}

// applyRules maps a validate tag onto s and reports whether the field is
// required.
func applyRules(s obj, t reflect.Type, tag string) (required bool) {
	s["x-validate"] = tag
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	all := strings.Split(tag, ",")
	rules, inner := all, []string(nil)
	for i, r := range all {
		if r == "dive" {
			rules, inner = all[:i], all[i+1:]
			break
		}
	}
	for _, r := range rules {
		if r == "required" {
			required = true
			notZero(s, t)
		}
		applyRule(s, t, r)
	}
	if inner != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array || t.Kind() == reflect.Map) {
		elem := s["items"]
		if t.Kind() == reflect.Map {
			elem = s["additionalProperties"]
		}
		if es, ok := elem.(obj); ok {
			for _, r := range inner {
				applyRule(es, t.Elem(), r)
			}
		}
	}
	return required
}

// notZero makes s refuse the zero value of t, which validate:"required"
// refuses: "", 0, false.
func notZero(s obj, t reflect.Type) {
	switch t.Kind() {
	case reflect.String:
		if _, ok := s["minLength"]; !ok {
			s["minLength"] = 1
		}
	case reflect.Bool:
		s["const"] = true
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		s["not"] = obj{"const": 0}
	}
}

var zeroValidator = validator.New(validator.WithRequiredStructEnabled())

// zeroFails reports whether the zero value of t fails the validate rules
// (false when the rules cannot be checked here: custom validations).
func zeroFails(t reflect.Type, rules string) (fails bool) {
	defer func() {
		if recover() != nil {
			fails = false
		}
	}()
	return zeroValidator.Var(reflect.Zero(t).Interface(), rules) != nil
}

func applyRule(s obj, t reflect.Type, rule string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	name, param, _ := strings.Cut(rule, "=")
	num := func() (float64, bool) {
		f, err := strconv.ParseFloat(param, 64)
		return f, err == nil
	}
	var minKey, maxKey string
	switch t.Kind() {
	case reflect.String:
		minKey, maxKey = "minLength", "maxLength"
	case reflect.Slice, reflect.Array:
		minKey, maxKey = "minItems", "maxItems"
	case reflect.Map:
		minKey, maxKey = "minProperties", "maxProperties"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		minKey, maxKey = "minimum", "maximum"
	}
	numeric := minKey == "minimum"
	switch name {
	case "min", "gte":
		if v, ok := num(); ok && minKey != "" {
			s[minKey] = v
		}
	case "max", "lte":
		if v, ok := num(); ok && maxKey != "" {
			s[maxKey] = v
		}
	case "gt":
		if v, ok := num(); ok && numeric {
			s["exclusiveMinimum"] = v
		} else if ok && minKey != "" {
			s[minKey] = v + 1
		}
	case "lt":
		if v, ok := num(); ok && numeric {
			s["exclusiveMaximum"] = v
		} else if ok && maxKey != "" {
			s[maxKey] = v - 1
		}
	case "len":
		if v, ok := num(); ok && minKey != "" && !numeric {
			s[minKey], s[maxKey] = v, v
		}
	case "eq":
		if numeric {
			if v, ok := num(); ok {
				s["const"] = v
			}
		} else if t.Kind() == reflect.String {
			s["const"] = param
		}
	case "ne":
		if numeric {
			if v, ok := num(); ok {
				s["not"] = obj{"const": v}
			}
		} else if t.Kind() == reflect.String {
			s["not"] = obj{"const": param}
		}
	case "oneof":
		var enum []any
		for _, p := range strings.Fields(param) {
			if numeric {
				if f, err := strconv.ParseFloat(p, 64); err == nil {
					enum = append(enum, f)
				}
				continue
			}
			enum = append(enum, strings.Trim(p, "'"))
		}
		if len(enum) > 0 {
			s["enum"] = enum
		}
	case "email":
		s["format"] = "email"
	case "url", "uri", "http_url":
		s["format"] = "uri"
	case "uuid", "uuid4", "uuid5", "uuid_rfc4122", "uuid4_rfc4122":
		s["format"] = "uuid"
	case "hostname", "hostname_rfc1123", "fqdn":
		s["format"] = "hostname"
	case "ipv4":
		s["format"] = "ipv4"
	case "ipv6":
		s["format"] = "ipv6"
	case "datetime":
		s["x-datetime-layout"] = param
	}
}
