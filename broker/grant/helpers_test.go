package grant

import (
	"fmt"
	"strings"
	"testing"
)

const (
	okSubjects = `[{namespace: demo, serviceAccount: app}]`
	okSecrets  = `[{name: db, source: {local: {}}}]`
)

// grantDoc renders one grant document with a flow-style spec.
func grantDoc(name, spec string) string {
	return fmt.Sprintf("apiVersion: keywarden.io/v1alpha1\nkind: AccessGrant\nmetadata: {name: %s}\nspec: %s\n", name, spec)
}

// specOf is a flow-style spec from its parts; empty parts are left out.
func specOf(parts ...string) string {
	var nonEmpty []string
	for _, p := range parts {
		if p != "" {
			nonEmpty = append(nonEmpty, p)
		}
	}
	return "{" + strings.Join(nonEmpty, ", ") + "}"
}

// mustSet parses YAML documents into a Set or fails the test.
func mustSet(tb testing.TB, docs ...string) *Set {
	tb.Helper()
	grants, err := Parse([]byte(strings.Join(docs, "---\n")))
	if err != nil {
		tb.Fatalf("Parse: %v", err)
	}
	s, err := NewSet(grants)
	if err != nil {
		tb.Fatalf("NewSet: %v", err)
	}
	return s
}
