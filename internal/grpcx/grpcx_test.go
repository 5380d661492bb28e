package grpcx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keywarden/keywarden/broker"
)

const secret = "s3cr3t-4b1d9e"

func TestToStatus_mapping(t *testing.T) {
	safe := Errorf(ErrFailedPrecondition, "no store")
	cases := []struct {
		name string
		err  error
		code codes.Code
		msg  string
	}{
		{"status passes through", status.Error(codes.Aborted, "as is"), codes.Aborted, "as is"},
		{"failed precondition", safe, codes.FailedPrecondition, "no store"},
		{"wrapped: own message only", fmt.Errorf("open %s: %w", secret, safe), codes.FailedPrecondition, "no store"},
		{"resource exhausted", Errorf(ErrResourceExhausted, "too far behind"), codes.ResourceExhausted, "too far behind"},
		{"broker kind", Errorf(broker.ErrInvalidArgument, "name is required"), codes.InvalidArgument, "name is required"},
		{"not found", Errorf(broker.ErrNotFound, "no grant %q", "g"), codes.NotFound, `no grant "g"`},
		{"internal kind", Errorf(broker.ErrInternal, "put secret: internal error"), codes.Internal, "put secret: internal error"},
		{"canceled", fmt.Errorf("fetch: %w", context.Canceled), codes.Canceled, "request canceled"},
		{"deadline", context.DeadlineExceeded, codes.DeadlineExceeded, "deadline exceeded"},
		{"backend text is hidden", errors.New("vault: permission denied for " + secret), codes.Internal, "internal error"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, _ := status.FromError(ToStatus(tc.err))
			if st.Code() != tc.code || st.Message() != tc.msg {
				t.Fatalf("got %v %q, want %v %q", st.Code(), st.Message(), tc.code, tc.msg)
			}
		})
	}
	if ToStatus(nil) != nil {
		t.Fatal("nil error mapped to a status")
	}
}

type request struct{ Token string }

// TestLogUnary_neverLogsBodies: the log line has the method, the code, what Annotate added and
// the status message, never the request or the response.
func TestLogUnary_neverLogsBodies(t *testing.T) {
	logs := &bytes.Buffer{} // the interceptors run on this goroutine
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	o := &observer{}
	logI, recI := LogUnary(log, o), RecoverUnary(log)
	info := &grpc.UnaryServerInfo{FullMethod: "/test.Svc/Call"}
	for _, fail := range []bool{false, true} {
		_, _ = logI(context.Background(), request{Token: secret}, info, func(ctx context.Context, req any) (any, error) {
			return recI(ctx, req, info, func(ctx context.Context, req any) (any, error) {
				Annotate(ctx, slog.String("namespace", "demo"))
				if fail {
					return nil, ToStatus(Errorf(broker.ErrPermissionDenied, "denied"))
				}
				return request{Token: secret}, nil
			})
		})
	}
	out := logs.String()
	for _, want := range []string{`"method":"/test.Svc/Call"`, `"code":"OK"`, `"code":"PermissionDenied"`, `"namespace":"demo"`, `"message":"denied"`} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, secret) {
		t.Fatalf("a request or response body reached the log:\n%s", out)
	}
	if fmt.Sprint(o.codes) != fmt.Sprint([]codes.Code{codes.OK, codes.PermissionDenied}) {
		t.Fatalf("observed %v", o.codes)
	}
}

type observer struct {
	mu    sync.Mutex
	codes []codes.Code
}

func (o *observer) Observe(_ string, c codes.Code, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.codes = append(o.codes, c)
}

// TestRecoverUnary_panicBecomesInternal: the caller gets Internal with a fixed message; the log
// has the stack but not the panic value.
func TestRecoverUnary_panicBecomesInternal(t *testing.T) {
	logs := &bytes.Buffer{} // the interceptors run on this goroutine
	log := slog.New(slog.NewJSONHandler(logs, nil))
	info := &grpc.UnaryServerInfo{FullMethod: "/test.Svc/Boom"}
	_, err := RecoverUnary(log)(context.Background(), nil, info, func(context.Context, any) (any, error) {
		panic("boom " + secret)
	})
	if st, _ := status.FromError(err); st.Code() != codes.Internal || st.Message() != "internal error" {
		t.Fatalf("got %v", err)
	}
	out := logs.String()
	if !strings.Contains(out, "panic in handler") || !strings.Contains(out, "/test.Svc/Boom") || !strings.Contains(out, "stack") {
		t.Fatalf("panic not logged:\n%s", out)
	}
	if strings.Contains(out, secret) {
		t.Fatal("the panic value reached the log")
	}
}
