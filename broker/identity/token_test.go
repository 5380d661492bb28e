package identity

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// secretFragments returns the pieces of a token that must never be printed:
// the whole token and each of its three parts.
func secretFragments(raw string) []string {
	out := []string{raw}
	for _, p := range strings.Split(raw, ".") {
		if len(p) >= 8 {
			out = append(out, p)
		}
	}
	return out
}

func assertNoSecret(t *testing.T, what, output string, fragments []string) {
	t.Helper()
	for _, f := range fragments {
		if strings.Contains(output, f) {
			t.Fatalf("%s contains token bytes: %q", what, output)
		}
	}
}

func TestToken_redacts(t *testing.T) {
	raw := signES(t, validClaims())
	tok := NewToken(raw)
	frags := secretFragments(raw)

	if tok.Reveal() != raw || tok.IsZero() || !NewToken("").IsZero() {
		t.Fatal("Reveal/IsZero broken")
	}

	formats := map[string]string{
		"%v %+v %#v":    fmt.Sprintf("%v %+v %#v", tok, tok, tok),
		"%s %q %x %X":   fmt.Sprintf("%s %q %x %X", tok, tok, tok, tok),
		"%d":            fmt.Sprintf("%d", tok),
		"pointer %v":    fmt.Sprintf("%v %+v", &tok, &tok),
		"in struct %+v": fmt.Sprintf("%+v %#v", struct{ T Token }{tok}, struct{ T Token }{tok}),
		"Sprint":        fmt.Sprint(tok) + fmt.Sprintln(tok),
		"String":        tok.String() + tok.GoString(),
	}
	for name, out := range formats {
		assertNoSecret(t, name, out, frags)
		if !strings.Contains(out, "[REDACTED]") {
			t.Fatalf("%s = %q, want [REDACTED]", name, out)
		}
	}

	js, err := json.Marshal(map[string]any{"token": tok, "ptr": &tok})
	if err != nil {
		t.Fatal(err)
	}
	assertNoSecret(t, "json", string(js), frags)
	if string(js) != `{"ptr":"[REDACTED]","token":"[REDACTED]"}` {
		t.Fatalf("json = %s", js)
	}

	var buf bytes.Buffer
	for _, h := range []slog.Handler{
		slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}),
		slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}),
	} {
		l := slog.New(h)
		l.Info("token", "token", tok, "ptr", &tok, slog.Any("any", tok), slog.Group("g", "t", tok))
		l.With("token", tok).Debug("with")
	}
	assertNoSecret(t, "slog", buf.String(), frags)
	if strings.Count(buf.String(), "[REDACTED]") < 10 {
		t.Fatalf("slog output missing redactions: %s", buf.String())
	}
}

// TestVerifier_Verify_errorsCarryNoTokenBytes runs every rejection path with
// claims that hold recognisable values and checks no error string contains
// token bytes or claim values.
func TestVerifier_Verify_errorsCarryNoTokenBytes(t *testing.T) {
	const marker = "zzmarkerzz"
	v := newTestVerifier(t, testKeySet(t), nil)
	c := validClaims()
	c["iss"] = "https://" + marker + ".example"
	c["sub"] = "system:serviceaccount:" + marker + ":x"
	raw := signRS(t, c)
	inputs := []string{
		raw,
		raw + "." + marker,
		marker + "." + marker + "." + marker,
		strings.Repeat(marker, 2000),
		b64([]byte(`{"alg":"`+marker+`","kid":"k"}`)) + ".e30.",
		b64([]byte(`{"alg":"RS256","kid":"`+marker+`"}`)) + ".e30.",
	}
	for _, in := range inputs {
		_, err := v.Verify(context.Background(), NewToken(in))
		if err == nil {
			t.Fatal("accepted")
		}
		msg := err.Error() + fmt.Sprintf("%v %+v %#v", err, err, err)
		frags := append(secretFragments(in), marker)
		assertNoSecret(t, "error", msg, frags)
		var ve *VerifyError
		if !errors.As(err, &ve) {
			t.Fatalf("not a VerifyError: %v", err)
		}
	}
}
