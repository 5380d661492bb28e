package identity

import (
	"fmt"
	"log/slog"
)

const redacted = "[REDACTED]"

// Token is a bearer token. Every way of printing it (fmt verbs, slog,
// encoding/json, encoding.TextMarshaler) yields "[REDACTED]"; only Reveal
// returns the raw value.
type Token struct {
	raw string
}

// NewToken wraps a raw bearer token (without the "Bearer " prefix).
func NewToken(raw string) Token { return Token{raw: raw} }

// Reveal returns the raw token. Call it only to verify or forward the token.
func (t Token) Reveal() string { return t.raw }

// IsZero reports whether the token is empty.
func (t Token) IsZero() bool { return t.raw == "" }

// String implements fmt.Stringer.
func (t Token) String() string { return redacted }

// GoString implements fmt.GoStringer (%#v).
func (t Token) GoString() string { return redacted }

// Format implements fmt.Formatter so that every verb (%d, %x, …) redacts,
// not only the verbs that use String.
func (t Token) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redacted)) }

// LogValue implements slog.LogValuer.
func (t Token) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalJSON implements json.Marshaler.
func (t Token) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// MarshalText implements encoding.TextMarshaler.
func (t Token) MarshalText() ([]byte, error) { return []byte(redacted), nil }
