package identity

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
)

// FuzzVerifier_Verify feeds arbitrary strings, seeded with valid RS256 and
// ES256 tokens, to Verify. It must never panic, and nothing but the exact
// seed tokens may verify: every other input that passes is a false accept.
func FuzzVerifier_Verify(f *testing.F) {
	v := newTestVerifier(f, testKeySet(f), nil)
	valid := map[string]bool{}
	for _, tok := range []string{signRS(f, validClaims()), signES(f, validClaims())} {
		valid[tok] = true
		f.Add(tok)
		parts := strings.Split(tok, ".")
		f.Add(parts[0] + "." + parts[1] + ".")
		f.Add(parts[0] + "." + b64([]byte(`{"aud":"keywarden","aud":"x"}`)) + "." + parts[2])
	}
	// Validly signed but without nbf: must stay a reject.
	noNbf := validClaims()
	delete(noNbf, "nbf")
	f.Add(signES(f, noNbf))
	f.Add("")
	f.Add("..")
	f.Add("a.b.c")
	f.Add(b64(header("none", testRSAKid)) + ".e30.")
	f.Add(b64([]byte(`{"alg":"RS256","kid":"rsa-1","kid":"ec-1"}`)) + ".e30.AAAA")
	var falseAccepts atomic.Int64
	f.Fuzz(func(t *testing.T, tok string) {
		w, err := v.Verify(context.Background(), NewToken(tok))
		if err != nil {
			return
		}
		if !valid[tok] {
			falseAccepts.Add(1)
			t.Fatalf("false accept #%d: %+v", falseAccepts.Load(), w)
		}
	})
	if n := falseAccepts.Load(); n != 0 {
		f.Fatalf("%d false accepts", n)
	}
}

// FuzzCheckJSONObject checks the duplicate-key scanner never panics and
// never passes something encoding/json would not decode as an object.
func FuzzCheckJSONObject(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":1}`, `{"a":1,"a":2}`, `{"a":{"b":1,"b":2}}`, `{"a":[{"b":1},{"b":1}]}`,
		`{"K":1,"\u212a":2}`, `{"a":1} {}`, `[]`, `{"a":[1,2,{"c":[[]]}]}`, `{`, `{"a"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if checkJSONObject(data) != nil {
			return
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatalf("scanner passed input json rejects: %v", err)
		}
	})
}

func TestCheckJSONObject(t *testing.T) {
	tests := []struct {
		in   string
		want error
	}{
		{`{}`, nil},
		{`{"a":1,"b":{"a":1},"c":[{"a":1},{"a":2}]}`, nil},
		{`{"a":1,"a":2}`, errDuplicateKey},
		{`{"a":{"b":1,"b":2}}`, errDuplicateKey},
		{`{"a":[{"b":1,"b":2}]}`, errDuplicateKey},
		{`{"iss":"a","ISS":"b"}`, errDuplicateKey},
		{`{"k":1,"\u212a":2}`, errDuplicateKey}, // Kelvin sign folds to k
		{`{"s":1,"\u017f":2}`, errDuplicateKey}, // long s folds to s
		{`[]`, errBadJSON},
		{`{} {}`, errBadJSON},
		{`{"a":1`, errBadJSON},
		{``, errBadJSON},
		{strings.Repeat(`{"a":`, maxJSONDepth+1) + `1` + strings.Repeat(`}`, maxJSONDepth+1), errBadJSON},
	}
	for _, tt := range tests {
		if got := checkJSONObject([]byte(tt.in)); got != tt.want {
			t.Errorf("checkJSONObject(%s) = %v, want %v", tt.in, got, tt.want)
		}
	}
}
