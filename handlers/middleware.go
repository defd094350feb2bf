package handlers

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"sync"

	"github.com/go-playground/validator/v10"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/security"
)

// TokenCheck verifies the caller's token with v before the rest of the
// chain runs, and puts the claims (security.ClaimsFromContext) and the raw
// token (security.TokenFromContext) in the context. Functions registered
// with Public() skip it.
func TokenCheck(v security.Verifier) Middleware {
	return func(next Handler) Handler {
		return HandlerFunc(func(ctx context.Context, req *Request) (any, error) {
			if req.fn != nil && req.fn.public && req.Token == "" {
				return next.Serve(ctx, req)
			}
			if req.Token == "" {
				return nil, fnmesh.NewError(fnmesh.CodeUnauthenticated, "missing token")
			}
			ctx, err := verifyToken(ctx, v, req.Token)
			if err != nil {
				return nil, err
			}
			return next.Serve(ctx, req)
		})
	}
}

// requireClaims runs a function's RequireClaims checks.
func requireClaims(next Handler) Handler {
	return HandlerFunc(func(ctx context.Context, req *Request) (any, error) {
		if len(req.fn.requires) == 0 {
			return next.Serve(ctx, req)
		}
		claims, ok := security.ClaimsFromContext(ctx)
		if !ok {
			return nil, fnmesh.Errorf(fnmesh.CodePermissionDenied, "%s.%s requires a verified token", req.Service, req.Function)
		}
		for _, check := range req.fn.requires {
			if err := check(ctx, claims); err != nil {
				var fe *fnmesh.Error
				if !errors.As(err, &fe) {
					err = fnmesh.Wrap(fnmesh.CodePermissionDenied, err)
				}
				return nil, err
			}
		}
		return next.Serve(ctx, req)
	})
}

// NewValidator returns the validator Validation uses by default: required
// structs enabled, fields named by their JSON names.
func NewValidator() *validator.Validate {
	v := validator.New(validator.WithRequiredStructEnabled())
	v.RegisterTagNameFunc(func(f reflect.StructField) string {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			return ""
		case "":
			return f.Name
		}
		return name
	})
	return v
}

// Validation decodes the arguments and checks them with v's struct tags;
// a failure is invalid_argument naming each failed field. Argument types
// with no validate tag anywhere skip the check.
func Validation(v *validator.Validate) Middleware {
	var checked sync.Map // reflect.Type -> bool: has validate tags
	return func(next Handler) Handler {
		return HandlerFunc(func(ctx context.Context, req *Request) (any, error) {
			arg, err := req.Arg()
			if err != nil {
				return nil, err
			}
			t := reflect.TypeOf(arg).Elem()
			has, ok := checked.Load(t)
			if !ok {
				has = hasValidateTags(t, map[reflect.Type]bool{})
				checked.Store(t, has)
			}
			if !has.(bool) {
				return next.Serve(ctx, req)
			}
			if err := v.StructCtx(ctx, arg); err != nil {
				return nil, validationError(req, err)
			}
			return next.Serve(ctx, req)
		})
	}
}

// hasValidateTags reports whether t is a struct with a validate tag on
// some field, its own or a nested struct's.
func hasValidateTags(t reflect.Type, seen map[reflect.Type]bool) bool {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array || t.Kind() == reflect.Map {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || seen[t] {
		return false
	}
	seen[t] = true
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if _, ok := f.Tag.Lookup("validate"); ok {
			return true
		}
		if hasValidateTags(f.Type, seen) {
			return true
		}
	}
	return false
}

func validationError(req *Request, err error) error {
	var verrs validator.ValidationErrors
	if !errors.As(err, &verrs) {
		return fnmesh.Wrap(fnmesh.CodeInvalidArgument, err)
	}
	e := &fnmesh.Error{Code: fnmesh.CodeInvalidArgument}
	parts := make([]string, 0, len(verrs))
	for _, fe := range verrs {
		field := fe.Namespace()
		if _, rest, ok := strings.Cut(field, "."); ok {
			field = rest // drop the argument type's own name
		}
		v := fnmesh.FieldViolation{Field: field, Rule: fe.Tag(), Param: fe.Param()}
		e.Fields = append(e.Fields, v)
		rule := v.Rule
		if v.Param != "" {
			rule += "=" + v.Param
		}
		parts = append(parts, field+" ("+rule+")")
	}
	e.Message = "arguments of " + req.Service + "." + req.Function + " failed validation: " + strings.Join(parts, ", ")
	return e
}

// verifyToken checks token with v and returns ctx carrying its claims and
// the token itself; any failure is unauthenticated.
func verifyToken(ctx context.Context, v security.Verifier, token string) (context.Context, error) {
	claims, err := v.Verify(ctx, token)
	if err != nil {
		if fnmesh.CodeOf(err) != fnmesh.CodeUnauthenticated {
			err = fnmesh.Wrap(fnmesh.CodeUnauthenticated, err)
		}
		return ctx, err
	}
	return security.WithToken(security.WithClaims(ctx, claims), token), nil
}
