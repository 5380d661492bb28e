package vault

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/keywarden/keywarden/broker/source"
)

// limitTransport stops reading a response body at max bytes, so a huge (or endless) answer
// cannot exhaust memory, including error bodies that vault/api buffers whole.
type limitTransport struct {
	rt  http.RoundTripper
	max int64
}

func (t *limitTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	if resp.ContentLength > t.max {
		_ = resp.Body.Close()
		return nil, ErrResponseTooLarge
	}
	resp.Body = &limitedBody{rc: resp.Body, left: t.max}
	return resp, nil
}

type limitedBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One more byte would exceed the limit: is there any?
		var one [1]byte
		if n, _ := b.rc.Read(one[:]); n > 0 {
			return 0, ErrResponseTooLarge
		}
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }

// newHTTPClient builds the HTTP client: TLS 1.2+ with the CA bundle when given, the client
// certificate when given (TLS cert auth; re-read from its files at every handshake, so a
// renewed certificate is used on the next connection), no proxy from the environment,
// bounded idle connections, and the response size limit.
func newHTTPClient(caFile, certFile, keyFile string, maxResponse int64, timeout time.Duration) (*http.Client, error) {
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if certFile != "" {
		// Fail at start on a missing or broken pair, not at the first handshake.
		if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
			return nil, fmt.Errorf("load vault client certificate: %w", err)
		}
		tlsCfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return nil, fmt.Errorf("load vault client certificate: %w", err)
			}
			return &c, nil
		}
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read vault ca file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("vault ca file %s holds no PEM certificate", caFile)
		}
		tlsCfg.RootCAs = pool
	}
	tr := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsCfg,
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: timeout,
		MaxIdleConns:          32,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
	return &http.Client{Transport: &limitTransport{rt: tr, max: maxResponse}, Timeout: timeout}, nil
}

// response is the envelope of every Vault answer. Data stays raw: each caller decodes what it
// expects, with json.Number for numbers.
type response struct {
	LeaseID       string          `json:"lease_id"`
	Renewable     bool            `json:"renewable"`
	LeaseDuration int64           `json:"lease_duration"`
	Data          json.RawMessage `json:"data"`
	Warnings      []string        `json:"warnings"`
	// sys/health answers at the top level.
	Enterprise *bool  `json:"enterprise"`
	Version    string `json:"version"`
	Auth       *struct {
		ClientToken   string `json:"client_token"`
		LeaseDuration int64  `json:"lease_duration"`
		Renewable     bool   `json:"renewable"`
	} `json:"auth"`
}

// callError is an error answer from Vault or the network, reduced to what is safe to show:
// the operation class, the HTTP status (0 for transport failures), a fixed reason and the
// source sentinel. Vault's error text is never kept.
type callError struct {
	kind   error
	class  string
	status int
	reason string
	// body is the raw error body for callers that must look inside (KV v2 deletion markers);
	// it is never printed.
	body       []byte
	retryAfter time.Duration
}

func (e *callError) Error() string {
	if e.status != 0 {
		return fmt.Sprintf("%s: vault %s: http %d", e.kind, e.class, e.status)
	}
	return fmt.Sprintf("%s: vault %s: %s", e.kind, e.class, e.reason)
}

func (e *callError) Unwrap() error { return e.kind }

// result is the metric label of an outcome.
func result(err error) string {
	var ce *callError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &ce) && (ce.status == http.StatusTooManyRequests):
		return "rate_limited"
	case errors.As(err, &ce) && ce.reason == "response too large":
		return "too_large"
	case errors.Is(err, source.ErrDeleted):
		return "deleted"
	case errors.Is(err, source.ErrNotFound):
		return "not_found"
	case errors.Is(err, source.ErrForbidden):
		return "forbidden"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, source.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return "unavailable"
	default:
		return "error"
	}
}

// call is one Vault request.
type call struct {
	class  string // metric label: kv-read, kv-metadata, lease-issue, lease-renew, …
	method string
	path   string // without the /v1/ prefix
	query  url.Values
	body   any
	token  string // empty for logins
	// ns is the namespace (X-Vault-Namespace); empty is the daemon-wide Config.Namespace.
	ns string
	// root sends the request without a namespace (sys/health).
	root bool
}

// roundTrip sends c once and classifies the answer. It does not pass the gate or handle
// re-login: see Source.do.
func (s *Source) roundTrip(ctx context.Context, c call) (*response, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	// The client sends its own namespace (X-Vault-Namespace) with every request: a shallow
	// copy carries this one's.
	ns := or(c.ns, s.cfg.Namespace)
	if c.root {
		ns = ""
	}
	client := s.client.WithNamespace(ns)
	req := client.NewRequest(c.method, "/v1/"+c.path)
	req.ClientToken = c.token
	if c.query != nil {
		req.Params = c.query
	}
	if c.body != nil {
		if err := req.SetJSONBody(c.body); err != nil {
			return nil, fmt.Errorf("encode vault request: %w", err)
		}
	}
	// The raw request is the only client call that takes a per-request token (the one the
	// caller checked, so a 403 can be tied to it) and leaves the body to us (size limit, KV v2
	// deletion markers in 404 bodies).
	//lint:ignore SA1019 see above; the Logical() helpers use the client-wide token
	resp, err := client.RawRequestWithContext(ctx, req)
	if resp != nil && resp.Body != nil {
		defer resp.Body.Close()
	}
	var re *api.ResponseError
	switch {
	case err == nil:
	case errors.As(err, &re):
		var body []byte
		if resp != nil && resp.Body != nil {
			body, _ = io.ReadAll(resp.Body)
		}
		return nil, statusError(c.class, re.StatusCode, body, resp)
	default:
		return nil, transportError(ctx, c.class, err)
	}
	if resp.StatusCode == http.StatusNoContent {
		return &response{}, nil
	}
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, transportError(ctx, c.class, err)
	}
	var out response
	if len(bytes.TrimSpace(raw)) == 0 {
		return &out, nil
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, &callError{kind: source.ErrUnavailable, class: c.class, reason: "malformed response"}
	}
	if !saneLeaseSeconds(out.LeaseDuration) || (out.Auth != nil && !saneLeaseSeconds(out.Auth.LeaseDuration)) {
		return nil, &callError{kind: source.ErrUnavailable, class: c.class, reason: "lease duration out of range"}
	}
	return &out, nil
}

// maxLeaseSeconds bounds the lease and token TTLs believed from Vault: ten years, far above
// any max_lease_ttl in use (Vault's default is 32 days). Larger values, and negative ones,
// come from a broken or hostile server or proxy; converted to a time.Duration they would
// overflow (past 292 years) into a wrong, possibly short or negative, expiry.
const maxLeaseSeconds = 10 * 365 * 24 * 60 * 60

func or(v, def string) string {
	if v != "" {
		return v
	}
	return def
}

func saneLeaseSeconds(s int64) bool { return s >= 0 && s <= maxLeaseSeconds }

func statusError(class string, status int, body []byte, resp *api.Response) *callError {
	ce := &callError{class: class, status: status, body: body}
	switch {
	case status == http.StatusNotFound:
		ce.kind = source.ErrNotFound
	case status == http.StatusForbidden || status == http.StatusUnauthorized:
		ce.kind = source.ErrForbidden
	case status == http.StatusBadRequest:
		// Vault answers 400 for a lease that is gone or not renewable, an unknown role, and
		// invalid input. Callers that know better (lease renewal) branch on the status.
		ce.kind = source.ErrNotFound
	default:
		// 429, 412, 5xx (503 = sealed or standby), anything unexpected: transient.
		ce.kind = source.ErrUnavailable
	}
	if resp != nil && resp.Response != nil {
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 && s < 3600 {
			ce.retryAfter = time.Duration(s) * time.Second
		}
	}
	return ce
}

func transportError(ctx context.Context, class string, err error) error {
	ce := &callError{kind: source.ErrUnavailable, class: class, reason: "connection failed"}
	var certErr *tls.CertificateVerificationError
	var recordErr tls.RecordHeaderError
	var uaErr x509.UnknownAuthorityError
	switch {
	case errors.Is(err, ErrResponseTooLarge):
		ce.reason = "response too large"
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		return context.Canceled
	case errors.Is(err, context.DeadlineExceeded), os.IsTimeout(err):
		ce.reason = "timeout"
	case errors.As(err, &certErr), errors.As(err, &recordErr), errors.As(err, &uaErr):
		ce.reason = "tls failure"
	}
	return ce
}
