package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keywarden/keywarden/crypto"
	keywardenv1 "github.com/keywarden/keywarden/proto/keywarden/v1"
)

// DefaultSocket is where the daemon's workload socket is mounted in a pod.
const DefaultSocket = "/run/keywarden/keywarden.sock"

// maxTokenFile bounds how much of a token file is read.
const maxTokenFile = 64 << 10

// Secret is one secret value.
type Secret struct {
	Name       string
	Data       map[string][]byte
	Version    string
	ExpiresAt  time.Time // zero when the secret does not expire
	RenewAfter time.Time // zero when only a change makes it stale
}

// String describes the secret without its data.
func (s Secret) String() string {
	return fmt.Sprintf("secret %q version %s keys %v", s.Name, s.Version, slices.Sorted(maps.Keys(s.Data)))
}

// GoString describes the secret without its data.
func (s Secret) GoString() string { return s.String() }

// Format prints the description for every verb, so no verb (%d, %x …) dumps Data.
func (s Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(s.String())) }

// TokenSource returns the bearer token for the next call.
type TokenSource func(ctx context.Context) (string, error)

type options struct {
	token      TokenSource
	dialOpts   []grpc.DialOption
	minBackoff time.Duration
	maxBackoff time.Duration
	plain      bool
}

// Option configures a Client.
type Option func(*options)

// WithTokenFile reads the token from path before every call (kubelet rotates it in place).
func WithTokenFile(path string) Option {
	return func(o *options) {
		o.token = func(context.Context) (string, error) { return readToken(path) }
	}
}

// WithToken uses a fixed token.
func WithToken(tok string) Option {
	return func(o *options) {
		o.token = func(context.Context) (string, error) { return tok, nil }
	}
}

// WithTokenSource uses f to get the token before every call.
func WithTokenSource(f TokenSource) Option { return func(o *options) { o.token = f } }

// WithDialOptions adds gRPC dial options.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOpts = append(o.dialOpts, opts...) }
}

// WithoutSealing asks for responses in clear. By default the client sends a reply key with
// every request and the daemon seals each secret to it (HPKE), so a socket sniffer, a proxy or
// a dump of the daemon's memory after the fact sees only ciphertext; a grant may require it
// (delivery GRPCSealed). Use this only with a daemon older than sealed responses.
func WithoutSealing() Option { return func(o *options) { o.plain = true } }

// WithBackoff sets the reconnect backoff bounds of Watch (defaults 200ms and 30s).
func WithBackoff(minDelay, maxDelay time.Duration) Option {
	return func(o *options) { o.minBackoff, o.maxBackoff = minDelay, maxDelay }
}

func readToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read token file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return "", fmt.Errorf("read token file: %w", err)
	}
	if len(b) > maxTokenFile {
		return "", fmt.Errorf("token file %s is larger than %d bytes", path, maxTokenFile)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return tok, nil
}

// Client talks to the daemon's workload API.
type Client struct {
	conn *grpc.ClientConn
	api  keywardenv1.SecretServiceClient
	opts options
	key  *crypto.ReplyKey // nil with WithoutSealing; made once per client, kept in memory only
}

// ErrNotSealed is a response that should have been sealed and was not, or whose sealed payload
// does not open for this request. Its value is never returned.
var ErrNotSealed = errors.New("client: the response is not sealed to this request")

// New returns a client for the daemon listening on socket. It does not connect until the
// first call.
func New(socket string, opts ...Option) (*Client, error) {
	o := options{minBackoff: 200 * time.Millisecond, maxBackoff: 30 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	if o.token == nil {
		return nil, errors.New("client: a token is required: use WithTokenFile, WithToken or WithTokenSource")
	}
	if socket == "" {
		socket = DefaultSocket
	}
	dial := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, o.dialOpts...)
	c := &Client{opts: o}
	if !o.plain {
		k, err := crypto.NewReplyKey()
		if err != nil {
			return nil, fmt.Errorf("client: %w", err)
		}
		c.key = k
	}
	conn, err := grpc.NewClient(Target(socket), dial...)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	c.conn, c.api = conn, keywardenv1.NewSecretServiceClient(conn)
	return c, nil
}

// Target is the gRPC dial target of a Unix socket path, relative or absolute.
func Target(socket string) string {
	if abs, err := filepath.Abs(socket); err == nil {
		socket = abs
	}
	return "unix://" + socket
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

func (c *Client) authed(ctx context.Context) (context.Context, error) {
	tok, err := c.opts.token(ctx)
	if err != nil {
		return nil, err
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok), nil
}

// Get returns the current value of the named secret. Errors are gRPC status errors from the
// daemon (status.Code tells PermissionDenied, Unauthenticated, NotFound, Unavailable …).
func (c *Client) Get(ctx context.Context, name string) (*Secret, error) {
	ctx, err := c.authed(ctx)
	if err != nil {
		return nil, err
	}
	rk := c.replyKey()
	resp, err := c.api.GetSecret(ctx, &keywardenv1.GetSecretRequest{Name: name, ReplyKey: rk})
	if err != nil {
		return nil, err
	}
	return c.open(resp.GetSecret(), rk, 1)
}

// Watch calls fn with the current value of every named secret and then with every new value,
// until ctx is done (it returns ctx.Err()), fn returns an error (returned as is), the daemon
// refuses permanently (InvalidArgument, PermissionDenied, NotFound), or a message does not
// open as sealed to this stream (ErrNotSealed; the message is not passed to fn). Transient failures,
// including the daemon restarting and the token expiring, reconnect with jittered backoff and a
// freshly read token.
func (c *Client) Watch(ctx context.Context, names []string, fn func(*Secret) error) error {
	delay := c.opts.minBackoff
	for {
		received, err := c.watchOnce(ctx, names, fn)
		var fnErr *callbackError
		switch {
		case errors.As(err, &fnErr):
			return fnErr.err
		case ctx.Err() != nil:
			return ctx.Err()
		case permanent(err), errors.Is(err, ErrNotSealed):
			// A daemon that does not seal will not start on a reconnect; a tampered
			// stream is not retried into acceptance.
			return err
		}
		if received {
			delay = c.opts.minBackoff
		}
		t := time.NewTimer(delay/2 + rand.N(delay/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		delay = min(delay*2, c.opts.maxBackoff)
	}
}

type callbackError struct{ err error }

func (e *callbackError) Error() string { return e.err.Error() }

func permanent(err error) bool {
	switch status.Code(err) {
	case codes.InvalidArgument, codes.PermissionDenied, codes.NotFound:
		return true
	}
	return false
}

func (c *Client) watchOnce(ctx context.Context, names []string, fn func(*Secret) error) (bool, error) {
	actx, err := c.authed(ctx)
	if err != nil {
		return false, err
	}
	actx, cancel := context.WithCancel(actx)
	defer cancel()
	rk := c.replyKey()
	stream, err := c.api.WatchSecrets(actx, &keywardenv1.WatchSecretsRequest{Names: names, ReplyKey: rk})
	if err != nil {
		return false, err
	}
	received := false
	var seq uint64
	for {
		resp, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = status.Error(codes.Unavailable, "watch stream closed by the daemon")
			}
			return received, err
		}
		seq++
		sec, err := c.open(resp.GetSecret(), rk, seq)
		if err != nil {
			return received, err // reconnects: the message is dropped, never delivered
		}
		received = true
		if err := fn(sec); err != nil {
			return received, &callbackError{err: err}
		}
	}
}

// replyKey is the reply key of one request, with a fresh nonce; nil with WithoutSealing.
func (c *Client) replyKey() *keywardenv1.ReplyKey {
	if c.key == nil {
		return nil
	}
	return &keywardenv1.ReplyKey{PublicKey: c.key.PublicKey(), Nonce: crypto.NewReplyNonce()}
}

// open checks and decrypts p, the seq-th message of the response to the request that sent rk.
// A message that is not sealed, or does not open under this request's context, fails closed.
func (c *Client) open(p *keywardenv1.Secret, rk *keywardenv1.ReplyKey, seq uint64) (*Secret, error) {
	if rk == nil {
		return fromProto(p, p.GetData()), nil
	}
	if len(p.GetSealed()) == 0 || len(p.GetData()) > 0 || p.GetSeq() != seq {
		return nil, fmt.Errorf("%w: secret %q (the daemon may predate sealed responses: upgrade it, or use WithoutSealing)", ErrNotSealed, p.GetName())
	}
	rc := crypto.ReplyContext{For: p.GetSealedFor(), Name: p.GetName(), Version: p.GetVersion(),
		ExpiresAt: unixNanos(p.GetExpiresAt()), RenewAfter: unixNanos(p.GetRenewAfter()), Nonce: rk.GetNonce(), Seq: seq}
	pt, err := c.key.Open(p.GetSealed(), rc)
	if err != nil {
		return nil, fmt.Errorf("%w: secret %q", ErrNotSealed, p.GetName())
	}
	var d keywardenv1.SecretData
	err = proto.Unmarshal(pt, &d)
	clear(pt)
	if err != nil {
		return nil, fmt.Errorf("%w: secret %q: the payload does not decode", ErrNotSealed, p.GetName())
	}
	return fromProto(p, d.GetData()), nil
}

func unixNanos(ts *timestamppb.Timestamp) int64 {
	if ts == nil {
		return 0
	}
	return ts.AsTime().UnixNano()
}

func fromProto(p *keywardenv1.Secret, data map[string][]byte) *Secret {
	s := &Secret{Name: p.GetName(), Data: data, Version: p.GetVersion()}
	if s.Data == nil {
		s.Data = map[string][]byte{}
	}
	if p.GetExpiresAt() != nil {
		s.ExpiresAt = p.GetExpiresAt().AsTime()
	}
	if p.GetRenewAfter() != nil {
		s.RenewAfter = p.GetRenewAfter().AsTime()
	}
	return s
}
