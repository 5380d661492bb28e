package broker

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/keywarden/keywarden/broker/rotate"
	"github.com/keywarden/keywarden/broker/source"
)

// The broker translates source errors into its own kinds; consumers (csi) decide on what it
// returns with source.IsAuthoritative, so the translation must keep the policy's answer.
func TestBroker_sourceError_keepsThePolicy(t *testing.T) {
	b := &Broker{log: discard()}
	for _, tc := range []struct {
		err  error
		kind error
	}{
		{source.ErrNotFound, ErrNotFound},
		{fmt.Errorf("kv: %w", source.ErrDeleted), ErrNotFound},
		{fmt.Errorf("vault 403: %w", source.ErrForbidden), ErrPermissionDenied},
		{fmt.Errorf("vault 503: %w", source.ErrUnavailable), ErrUnavailable},
		{context.DeadlineExceeded, ErrUnavailable},
		{context.Canceled, ErrCanceled},
		{errors.New("backend text"), ErrInternal},
	} {
		got := b.sourceError("db", tc.err)
		if !errors.Is(got, tc.kind) {
			t.Errorf("sourceError(%v) = %v, want kind %v", tc.err, got, tc.kind)
		}
		if a, want := source.IsAuthoritative(got), source.IsAuthoritative(tc.err); a != want {
			t.Errorf("IsAuthoritative(sourceError(%v)) = %v, want %v as for the source error", tc.err, a, want)
		}
		if stops := errors.Is(got, ErrNotFound) || errors.Is(got, ErrPermissionDenied); stops != source.IsAuthoritative(tc.err) {
			t.Errorf("sourceError(%v) = %v: NotFound/PermissionDenied must mean exactly the authoritative classes", tc.err, got)
		}
	}
}

// A value that ran out with the source unreachable is Unavailable with a message saying so,
// whether the source failed or the caller's deadline came first, and without the backend's
// text.
func TestBroker_sourceError_expiredSaysWhy(t *testing.T) {
	b := &Broker{log: discard()}
	const want = `secret "db": its cached value expired and the source cannot be reached for a new one; try again`
	for _, cause := range []error{
		fmt.Errorf("vault: dial tcp 10.0.0.1:8200: connection refused: %w", source.ErrUnavailable),
		context.DeadlineExceeded,
	} {
		got := b.sourceError("db", fmt.Errorf("%w (at 2026-01-02T03:04:05Z): %w", rotate.ErrExpired, cause))
		if !errors.Is(got, ErrUnavailable) || got.Error() != want {
			t.Errorf("sourceError(expired, %v) = %q, want Unavailable %q", cause, got, want)
		}
		if source.IsAuthoritative(got) {
			t.Errorf("sourceError(expired, %v) is authoritative: volumes would be cleared", cause)
		}
	}
}
