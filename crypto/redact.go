package crypto

import (
	"fmt"
	"io"
	"log/slog"
)

// redacted is what every key-holding type prints instead of itself.
const redacted = "[REDACTED]"

// redactor is embedded in key-holding types. Implementing fmt.Formatter (and
// not only Stringer) matters: with only String, verbs such as %d or %+d would
// still dump the struct's fields, and a Tink AES-GCM primitive's fields hold
// the expanded key schedule.
type redactor struct{ name string }

// Format writes the type name and a redaction marker for every verb.
func (r redactor) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, r.String()) }

// String implements fmt.Stringer.
func (r redactor) String() string { return r.name + redacted }

// GoString implements fmt.GoStringer (%#v).
func (r redactor) GoString() string { return r.String() }

// LogValue implements slog.LogValuer.
func (r redactor) LogValue() slog.Value { return slog.StringValue(r.String()) }

var (
	_ fmt.Formatter  = redactor{}
	_ fmt.Stringer   = redactor{}
	_ fmt.GoStringer = redactor{}
	_ slog.LogValuer = redactor{}
)
