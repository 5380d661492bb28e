package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/keywarden/keywarden/crypto"
)

// AnchorVersion is the version of the anchor record format; records of other versions are
// reported, not guessed at.
const AnchorVersion = 1

// anchorDomain separates anchor signatures from anything else the key could ever sign.
const anchorDomain = "keywarden audit anchor v1\n"

// DefaultAnchorInterval is how often an Anchorer publishes when AnchorerConfig.Interval is 0.
const DefaultAnchorInterval = 5 * time.Minute

// Anchor is a signed checkpoint of the log's head, published where the node cannot change it
// afterwards (a Kubernetes Event the daemon may only create; the daemon's log stream once log
// shipping has taken it). Whoever holds the KEK can rewrite the stored chain consistently, but
// not the anchors already published: VerifyAnchored finds the rewrite of any entry at or
// before an anchored one.
type Anchor struct {
	// V is AnchorVersion.
	V int `json:"v"`
	// Node is the node whose log this is.
	Node string `json:"node"`
	// Seq and Hash are the log's head when the anchor was made.
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
	// Time is when the anchor was made (UTC).
	Time time.Time `json:"time"`
	// Key is the binary Tink public keyset that verifies Sig (base64 in JSON). It is carried
	// so anchors verify on their own; pin its fingerprint to know whose it is.
	Key []byte `json:"key"`
	// Sig signs every field above.
	Sig []byte `json:"sig"`
}

// AnchorSigner signs anchors (crypto.SigningKey).
type AnchorSigner interface {
	Sign(data []byte) ([]byte, error)
	PublicKeyset() []byte
}

var _ AnchorSigner = (*crypto.SigningKey)(nil)

// NewAnchor signs head as the anchor of node at now.
func NewAnchor(s AnchorSigner, node string, head Head, now time.Time) (Anchor, error) {
	a := Anchor{V: AnchorVersion, Node: node, Seq: head.Seq, Hash: head.Hash, Time: now.UTC().Round(0), Key: s.PublicKeyset()}
	sig, err := s.Sign(a.signed())
	if err != nil {
		return Anchor{}, fmt.Errorf("sign audit anchor: %w", err)
	}
	a.Sig = sig
	return a, nil
}

// signed is what Sig covers: a domain prefix and every field but Sig, in a fixed order.
func (a *Anchor) signed() []byte {
	b, err := json.Marshal(struct {
		V    int    `json:"v"`
		Node string `json:"node"`
		Seq  uint64 `json:"seq"`
		Hash string `json:"hash"`
		Time string `json:"time"`
		Key  []byte `json:"key"`
	}{a.V, a.Node, a.Seq, a.Hash, a.Time.UTC().Format(time.RFC3339Nano), a.Key})
	if err != nil {
		panic(fmt.Sprintf("audit: encode anchor: %v", err)) // strings, integers, bytes: cannot fail
	}
	return append([]byte(anchorDomain), b...)
}

// CheckSignature verifies Sig under Key (crypto.ErrBadSignature, crypto.ErrInvalidKeyset).
// It says nothing about whose key Key is: compare KeyFingerprint with a pinned one.
func (a *Anchor) CheckSignature() error { return crypto.VerifySignature(a.Key, a.signed(), a.Sig) }

// KeyFingerprint is the hex SHA-256 of Key.
func (a *Anchor) KeyFingerprint() string { return crypto.KeyFingerprint(a.Key) }

// Marshal is the anchor's compact JSON form, one line.
func (a *Anchor) Marshal() []byte {
	b, err := json.Marshal(a)
	if err != nil {
		panic(fmt.Sprintf("audit: encode anchor: %v", err))
	}
	return b
}

// AnchorSink publishes anchors somewhere the node cannot rewrite them.
type AnchorSink interface {
	// Name names the sink in logs.
	Name() string
	PublishAnchor(ctx context.Context, a Anchor) error
}

// LogSink writes each anchor as one record of the operational log (message "audit anchor",
// attribute "anchor" holding the record's JSON), for log shipping to keep off the node.
type LogSink struct {
	Logger *slog.Logger
}

// Name implements AnchorSink.
func (LogSink) Name() string { return "log" }

// PublishAnchor implements AnchorSink.
func (s LogSink) PublishAnchor(ctx context.Context, a Anchor) error {
	s.Logger.LogAttrs(ctx, slog.LevelInfo, "audit anchor", slog.String("anchor", string(a.Marshal())))
	return nil
}

// headSource is the part of Log an Anchorer reads.
type headSource interface {
	Head() Head
}

// AnchorerConfig configures an Anchorer.
type AnchorerConfig struct {
	// Log is the audit log whose head is anchored. Required.
	Log *Log
	// Signer signs the anchors; it must not be the KEK. Required.
	Signer AnchorSigner
	// Node names the node in every anchor. Required.
	Node string
	// Sinks receive every anchor. At least one is required.
	Sinks []AnchorSink
	// Interval between anchors. Default DefaultAnchorInterval.
	Interval time.Duration
	// Clock drives the ticker and stamps anchors. Defaults to the real clock.
	Clock clock.WithTicker
	// Logger receives publish failures. Required.
	Logger *slog.Logger
}

// Anchorer publishes a signed anchor of the log's head when it starts, every Interval while it
// runs, and once more on Publish at shutdown. It anchors even when the head has not moved, so
// that a gap in a node's anchors means the node stopped publishing, not that it was idle.
type Anchorer struct {
	cfg  AnchorerConfig
	head headSource

	mu        sync.Mutex
	last      Anchor
	published uint64
	failures  uint64
}

// NewAnchorer checks cfg and applies its defaults.
func NewAnchorer(cfg AnchorerConfig) (*Anchorer, error) {
	switch {
	case cfg.Log == nil:
		return nil, fmt.Errorf("%w: log is required", ErrInvalidConfig)
	case cfg.Signer == nil:
		return nil, fmt.Errorf("%w: signer is required", ErrInvalidConfig)
	case cfg.Node == "":
		return nil, fmt.Errorf("%w: node is required", ErrInvalidConfig)
	case len(cfg.Sinks) == 0:
		return nil, fmt.Errorf("%w: at least one anchor sink is required", ErrInvalidConfig)
	case cfg.Logger == nil:
		return nil, fmt.Errorf("%w: logger is required", ErrInvalidConfig)
	case cfg.Interval < 0:
		return nil, fmt.Errorf("%w: negative anchor interval", ErrInvalidConfig)
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultAnchorInterval
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	return &Anchorer{cfg: cfg, head: cfg.Log}, nil
}

// Run publishes an anchor now and every Interval until ctx is done. A sink that fails is
// logged and tried again at the next tick; Run itself never fails.
func (a *Anchorer) Run(ctx context.Context) error {
	t := a.cfg.Clock.NewTicker(a.cfg.Interval)
	defer t.Stop()
	for {
		_ = a.Publish(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
		}
	}
}

// Publish signs the current head and hands it to every sink; the error joins the sinks'
// failures (each is also logged).
func (a *Anchorer) Publish(ctx context.Context) error {
	an, err := NewAnchor(a.cfg.Signer, a.cfg.Node, a.head.Head(), a.cfg.Clock.Now())
	if err != nil {
		a.fail("signer", err)
		return err
	}
	var failed error
	for _, s := range a.cfg.Sinks {
		if err := s.PublishAnchor(ctx, an); err != nil {
			a.fail(s.Name(), err)
			failed = fmt.Errorf("publish audit anchor to %s: %w", s.Name(), err)
		}
	}
	a.mu.Lock()
	if failed == nil {
		a.last = an
		a.published++
	}
	a.mu.Unlock()
	return failed
}

func (a *Anchorer) fail(sink string, err error) {
	a.mu.Lock()
	a.failures++
	a.mu.Unlock()
	a.cfg.Logger.Error("audit anchor not published", slog.String("sink", sink), slog.Any("error", err))
}

// AnchorStats are the Anchorer's counters.
type AnchorStats struct {
	// Last is the last anchor every sink accepted (zero when none).
	Last Anchor
	// Published counts anchors every sink accepted.
	Published uint64
	// Failures counts refusals by a sink or the signer (one per sink and attempt).
	Failures uint64
}

// Stats returns the Anchorer's counters.
func (a *Anchorer) Stats() AnchorStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return AnchorStats{Last: a.last, Published: a.published, Failures: a.failures}
}

// ParseAnchorLine decodes one anchor from a line that is an anchor record or a log record of
// LogSink: JSON (an object whose "anchor" is the record, as a string or an object) or slog's
// text format.
// ok is false for a line that is neither (another log record), so a daemon's whole log can
// be fed in.
func ParseAnchorLine(line []byte) (a Anchor, ok bool, err error) {
	line = bytes.TrimSpace(line)
	if len(line) > 0 && line[0] != '{' {
		return parseTextAnchorLine(line)
	}
	if len(line) == 0 {
		return Anchor{}, false, nil
	}
	var probe struct {
		V      *int            `json:"v"`
		Msg    *string         `json:"msg"`
		Anchor json.RawMessage `json:"anchor"`
	}
	if json.Unmarshal(line, &probe) != nil {
		return Anchor{}, false, nil
	}
	if probe.Msg != nil && *probe.Msg != "audit anchor" {
		return Anchor{}, false, nil // another log record, whatever its attributes
	}
	raw := line
	switch {
	case len(probe.Anchor) > 0 && probe.Anchor[0] == '"':
		var s string
		if err := json.Unmarshal(probe.Anchor, &s); err != nil {
			return Anchor{}, true, fmt.Errorf("anchor does not parse: %w", err)
		}
		raw = []byte(s)
	case len(probe.Anchor) > 0:
		raw = probe.Anchor
	case probe.V == nil:
		return Anchor{}, false, nil
	}
	return decodeAnchor(raw)
}

func decodeAnchor(raw []byte) (Anchor, bool, error) {
	var a Anchor
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		return Anchor{}, true, fmt.Errorf("anchor does not parse: %w", err)
	}
	return a, true, nil
}

// parseTextAnchorLine reads a LogSink record of slog's text format: msg="audit anchor" and
// anchor="<quoted record>".
func parseTextAnchorLine(line []byte) (Anchor, bool, error) {
	s := string(line)
	if !strings.Contains(s, `msg="audit anchor"`) {
		return Anchor{}, false, nil
	}
	_, rest, ok := strings.Cut(s, " anchor=")
	if !ok {
		return Anchor{}, false, nil
	}
	q, err := strconv.QuotedPrefix(rest)
	if err != nil {
		return Anchor{}, true, fmt.Errorf("anchor does not parse: %w", err)
	}
	raw, err := strconv.Unquote(q)
	if err != nil {
		return Anchor{}, true, fmt.Errorf("anchor does not parse: %w", err)
	}
	return decodeAnchor([]byte(raw))
}
