package broker

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

func TestBroker_ExpandSecrets(t *testing.T) {
	b := newBroker(t, clocktesting.NewFakeClock(time.Now()), fakeVerifier{})
	var many strings.Builder
	for i := range MaxWatchNames + 1 {
		fmt.Fprintf(&many, "    - {name: s%d, source: {local: {}}}\n", i)
	}
	if err := b.UpdateGrantSource("store", mustSet(t, `apiVersion: keywarden.io/v1alpha1
kind: AccessGrant
metadata: {name: two}
spec:
  subjects: [{namespace: demo, serviceAccount: app}]
  secrets:
    - {name: zeta, source: {local: {}}}
    - {name: alpha, source: {local: {}}}
---
apiVersion: keywarden.io/v1alpha1
kind: AccessGrant
metadata: {name: many}
spec:
  subjects: [{namespace: demo, serviceAccount: app}]
  secrets:
`+many.String())); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		grant   string
		names   []string
		want    []string
		wantErr string
	}{
		{"names as given", "", []string{"db", "api"}, []string{"db", "api"}, ""},
		{"grant in its order", "two", nil, []string{"zeta", "alpha"}, ""},
		{"grant of another source", "g1", []string{"ignored"}, []string{"db"}, ""},
		{"grant not in force", "nope", nil, nil, `grant "nope" is not in force or names no secrets (or more than 64)`},
		{"too many secrets", "many", nil, nil, `grant "many" is not in force or names no secrets (or more than 64)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := b.ExpandSecrets(tc.grant, tc.names)
			if tc.wantErr != "" {
				if !errors.Is(err, ErrInvalidArgument) || err.Error() != tc.wantErr {
					t.Fatalf("err = %v, want ErrInvalidArgument %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
