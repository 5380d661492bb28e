package source

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

func TestIsAuthoritative(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		want   bool
		class  error
		reason string
	}{
		{"nil", nil, false, nil, "fetch failed"},
		{"not found", ErrNotFound, true, ErrNotFound, ErrNotFound.Error()},
		{"deleted", ErrDeleted, true, ErrDeleted, ErrDeleted.Error()},
		{"forbidden", ErrForbidden, true, ErrForbidden, ErrForbidden.Error()},
		{"wrapped not found", fmt.Errorf("kv read secret/db: %w", ErrNotFound), true, ErrNotFound, ErrNotFound.Error()},
		{"wrapped twice forbidden", fmt.Errorf("fetch: %w", fmt.Errorf("vault 403: %w", ErrForbidden)), true, ErrForbidden, ErrForbidden.Error()},
		{"unavailable", ErrUnavailable, false, ErrUnavailable, ErrUnavailable.Error()},
		{"wrapped unavailable", fmt.Errorf("vault 503: %w", ErrUnavailable), false, ErrUnavailable, ErrUnavailable.Error()},
		{"unknown source", ErrUnknownSource, false, ErrUnknownSource, ErrUnknownSource.Error()},
		{"invalid ref", ErrInvalidRef, false, nil, "fetch failed"},
		{"deadline", context.DeadlineExceeded, false, context.DeadlineExceeded, context.DeadlineExceeded.Error()},
		{"canceled", fmt.Errorf("fetch: %w", context.Canceled), false, context.Canceled, context.Canceled.Error()},
		{"backend text only", errors.New("dial tcp 10.0.0.1:8200: connection refused"), false, nil, "fetch failed"},
		{"joined transient and deleted", errors.Join(ErrUnavailable, ErrDeleted), true, ErrDeleted, ErrDeleted.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := IsAuthoritative(tc.err); got != tc.want {
				t.Errorf("IsAuthoritative(%v) = %v, want %v", tc.err, got, tc.want)
			}
			if got := Class(tc.err); got != tc.class {
				t.Errorf("Class(%v) = %v, want %v", tc.err, got, tc.class)
			}
			if got := Reason(tc.err); got != tc.reason {
				t.Errorf("Reason(%v) = %q, want %q", tc.err, got, tc.reason)
			}
		})
	}
}
