package fnmesh_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/fnmesh/fnmesh"
)

func TestErrorsIsMatchesByCode(t *testing.T) {
	err := fmt.Errorf("wrapped: %w", fnmesh.NewError(fnmesh.CodeNotFound, "function math.pow not found"))
	if !errors.Is(err, fnmesh.ErrNotFound) {
		t.Fatal("errors.Is(err, ErrNotFound) false")
	}
	if errors.Is(err, fnmesh.ErrInternal) {
		t.Fatal("not_found matches internal")
	}
	var fe *fnmesh.Error
	if !errors.As(err, &fe) || fe.Message != "function math.pow not found" {
		t.Fatalf("errors.As: %+v", fe)
	}
	if fnmesh.CodeOf(err) != fnmesh.CodeNotFound {
		t.Fatalf("CodeOf: %s", fnmesh.CodeOf(err))
	}
}

func TestContextErrorsMatch(t *testing.T) {
	d := fnmesh.NewError(fnmesh.CodeDeadlineExceeded, "late")
	if !errors.Is(d, context.DeadlineExceeded) || errors.Is(d, context.Canceled) {
		t.Fatal("deadline_exceeded does not match context.DeadlineExceeded only")
	}
	c := fnmesh.NewError(fnmesh.CodeCanceled, "gone")
	if !errors.Is(c, context.Canceled) {
		t.Fatal("canceled does not match context.Canceled")
	}
	if fnmesh.CodeOf(context.DeadlineExceeded) != fnmesh.CodeDeadlineExceeded || fnmesh.CodeOf(errors.New("x")) != fnmesh.CodeInternal || fnmesh.CodeOf(nil) != "" {
		t.Fatal("CodeOf of plain errors")
	}
}

func TestErrorfKeepsCause(t *testing.T) {
	cause := errors.New("disk full")
	err := fnmesh.Errorf(fnmesh.CodeInternal, "saving: %w", cause)
	if !errors.Is(err, cause) || err.Error() != "internal: saving: disk full" {
		t.Fatalf("%v", err)
	}
}

func TestValidCode(t *testing.T) {
	for c, want := range map[fnmesh.Code]bool{
		"insufficient_funds": true, "billing.card_declined": true, "": false, "Bad": false, "with space": false,
	} {
		if fnmesh.ValidCode(c) != want {
			t.Errorf("ValidCode(%q) != %v", c, want)
		}
	}
	if !fnmesh.CodeInternal.IsMeshCode() || fnmesh.Code("insufficient_funds").IsMeshCode() {
		t.Fatal("IsMeshCode")
	}
}
