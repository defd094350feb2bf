package handlers

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/fnmesh/fnmesh/security"
)

// With Config.Policy set, a call runs this way:
//
//  1. A token, if one is sent, is verified by Config.Auth; a bad token is
//     unauthenticated whatever the rule (a rule never admits a forged
//     or expired token, not even allow).
//  2. The function's rule decides: the policy's rule for the function,
//     else allow for a function registered Public(), else the policy's
//     Default (deny when nil). A refusal is unauthenticated when no token
//     was sent and the rule reads one, permission_denied otherwise.
//  3. RequireRole/RequireClaims checks of the function, then Use
//     middleware, then the idempotency key (a stored result is returned
//     only here), then validation, then the function.

// ruleFor returns the rule that decides who calls f.
func (s *Service) ruleFor(f *function) (security.Rule, bool) {
	if _, ok := s.cfg.Policy.Functions[f.name]; !ok && f.public {
		return security.Allow(), false
	}
	return s.cfg.Policy.RuleFor(f.name)
}

// checkPolicy reports policy problems against the registered functions:
// rules for functions the service lacks (a typo would leave the real
// function on the default) and Public() functions the policy restricts.
func (s *Service) checkPolicy() []error {
	p := s.cfg.Policy
	if p == nil {
		return nil
	}
	var errs []error
	if err := p.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("handlers: Config.Policy: %w", err))
	}
	var unknown []string
	for _, name := range p.Names() {
		f := s.funcs[name]
		if f == nil {
			unknown = append(unknown, name)
			continue
		}
		if f.public && p.Functions[name].Kind != security.KindAllow {
			errs = append(errs, fmt.Errorf("handlers: function %s.%s is registered Public() but the policy says %s: choose one", s.name, name, p.Functions[name]))
		}
	}
	if len(unknown) > 0 {
		errs = append(errs, fmt.Errorf("handlers: Config.Policy has rules for functions service %s does not register: %s", s.name, strings.Join(unknown, ", ")))
	}
	return errs
}

// warnDenied logs the functions nobody may call.
func (s *Service) warnDenied() {
	if s.cfg.Policy == nil {
		return
	}
	var denied []string
	for _, f := range s.funcs {
		if r, isDefault := s.ruleFor(f); isDefault && r.Kind == security.KindDeny {
			denied = append(denied, f.name)
		}
	}
	if len(denied) > 0 {
		sort.Strings(denied)
		s.cfg.Logger.Warn("functions without an access rule: every call is denied", "service", s.name, "functions", denied)
	}
}

// optionalToken verifies a token when one is sent and passes calls
// without one on, without claims: the policy decides about those.
func optionalToken(v security.Verifier) Middleware {
	return func(next Handler) Handler {
		return HandlerFunc(func(ctx context.Context, req *Request) (any, error) {
			if req.Token == "" {
				return next.Serve(ctx, req)
			}
			ctx, err := verifyToken(ctx, v, req.Token)
			if err != nil {
				return nil, err
			}
			return next.Serve(ctx, req)
		})
	}
}

// policyCheck applies f's rule before anything else of f runs.
func policyCheck(service string, rule security.Rule) Middleware {
	readsArgs := rule.ReadsArgs()
	allowAll := rule.Kind == security.KindAllow
	return func(next Handler) Handler {
		return HandlerFunc(func(ctx context.Context, req *Request) (any, error) {
			if allowAll {
				return next.Serve(ctx, req)
			}
			claims, _ := security.ClaimsFromContext(ctx)
			in := security.Input{Service: service, Function: req.Function, Claims: claims}
			if readsArgs {
				in.Args = func() (any, error) { return security.DecodeArgs(req.Payload) }
			}
			if err := security.Decide(rule, in); err != nil {
				return nil, err
			}
			return next.Serve(ctx, req)
		})
	}
}
