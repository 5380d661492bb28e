package grant

import (
	"fmt"
	"strings"
)

// Explanation is a Decision with the reasoning behind it, for `keywarden grant explain`.
type Explanation struct {
	// Request is the request explained.
	Request Request
	// Decision is exactly what Evaluate returns for Request.
	Decision Decision
	// Grants traces every grant of the Set, sorted by name.
	Grants []GrantTrace
	// Hint is one line saying what grant would be needed; empty when allowed.
	Hint string
}

// GrantTrace is how one grant relates to the request.
type GrantTrace struct {
	// Name and Effect of the grant.
	Name   string
	Effect Effect
	// SubjectMatched reports whether a subject matched; SubjectIndex is the first matching
	// clause of spec.subjects, or -1.
	SubjectMatched bool
	SubjectIndex   int
	// SecretMatched reports whether the grant names the requested secret; SecretIndex is its
	// clause in spec.secrets, or -1.
	SecretMatched bool
	SecretIndex   int
	// DeliveryMatched reports whether the grant allows the requested channel.
	DeliveryMatched bool
	// Matched is SubjectMatched && SecretMatched && DeliveryMatched: the grant applies.
	Matched bool
}

// Explain evaluates r and traces every grant. It is meant for administrators: unlike
// Decision.Reason, it lists grant names and what they cover, so it must not be shown to the
// workload that made the request.
func (s *Set) Explain(r Request) Explanation {
	e := Explanation{Request: r, Decision: s.Evaluate(r)}
	if s == nil {
		e.Hint = hintNew(&r)
		return e
	}
	var rid requestID
	for i := range s.grants {
		c := &s.grants[i]
		t := GrantTrace{Name: c.g.Name, Effect: c.g.Spec.Effect, SubjectIndex: -1, SecretIndex: -1}
		t.SubjectIndex = c.matchSubject(&r, &rid)
		t.SubjectMatched = t.SubjectIndex >= 0
		for j := range c.g.Spec.Secrets {
			if c.g.Spec.Secrets[j].Name == r.Secret {
				t.SecretMatched, t.SecretIndex = true, j
				break
			}
		}
		t.DeliveryMatched = c.matchDelivery(r.Delivery)
		t.Matched = t.SubjectMatched && t.SecretMatched && t.DeliveryMatched
		e.Grants = append(e.Grants, t)
	}
	if !e.Decision.Allowed {
		e.Hint = s.hint(&r, e.Grants)
	}
	return e
}

func (s *Set) hint(r *Request, traces []GrantTrace) string {
	if e := r.Delivery; e != DeliveryCSI && e != DeliveryGRPC {
		return "the request must name a delivery: CSI or GRPC"
	}
	if err := ValidateSecretName(r.Secret); err != nil {
		return fmt.Sprintf("the requested secret name is invalid (%s): no grant can match it", detailOf(err, ErrInvalidSecretName))
	}
	for _, t := range traces {
		if t.Matched && t.Effect == EffectDeny {
			return fmt.Sprintf("Deny grant %s matches and a Deny always wins: remove secret %s from it or narrow its subjects", quote(t.Name), quote(r.Secret))
		}
	}
	for _, t := range traces {
		if t.Effect == EffectAllow && t.SubjectMatched && t.SecretMatched && !t.DeliveryMatched {
			return fmt.Sprintf("grant %s matches except for delivery: add %s to its spec.delivery", quote(t.Name), r.Delivery)
		}
	}
	if sub := subjectFor(r); sub != "" {
		for _, t := range traces {
			if t.Effect == EffectAllow && !t.SubjectMatched && t.SecretMatched && t.DeliveryMatched {
				return fmt.Sprintf("grant %s covers secret %s but not this workload: add subject %s to it", quote(t.Name), quote(r.Secret), sub)
			}
		}
	}
	return hintNew(r)
}

func hintNew(r *Request) string {
	sub := subjectFor(r)
	if sub == "" {
		return "the request has no identity (namespace+serviceAccount or SPIFFE ID): no grant can match it"
	}
	return fmt.Sprintf("add an Allow grant with subject %s and secret %s (delivery %s)", sub, quote(r.Secret), describeDelivery(r.Delivery))
}

// subjectFor is the YAML flow form of the narrowest subject matching r.
func subjectFor(r *Request) string {
	switch {
	case r.Namespace != "" && r.ServiceAccount != "":
		return fmt.Sprintf("{namespace: %s, serviceAccount: %s}", r.Namespace, r.ServiceAccount)
	case r.SPIFFEID != "":
		return fmt.Sprintf("{spiffeID: %s}", r.SPIFFEID)
	}
	return ""
}

// String renders the explanation deterministically, for `keywarden grant explain`:
//
//	request: namespace="demo" serviceAccount="app" spiffeID="" secret="db" delivery=CSI
//	decision: ALLOW by grant "demo-app"
//	grants (2):
//	  demo-app  Allow  subject=yes[0]  secret=yes[0]  delivery=yes  => match
//	  other     Allow  subject=no      secret=no      delivery=yes
//	hint: ...
func (e Explanation) String() string {
	var b strings.Builder
	r := e.Request
	fmt.Fprintf(&b, "request: namespace=%s serviceAccount=%s spiffeID=%s secret=%s delivery=%s\n",
		quote(r.Namespace), quote(r.ServiceAccount), quote(r.SPIFFEID), quote(r.Secret), quote(string(r.Delivery)))
	switch {
	case e.Decision.Allowed:
		fmt.Fprintf(&b, "decision: ALLOW by grant %s\n", quote(e.Decision.Grant))
	case e.Decision.Grant != "":
		fmt.Fprintf(&b, "decision: DENY by grant %s\n", quote(e.Decision.Grant))
	default:
		fmt.Fprintf(&b, "decision: DENY (%s)\n", e.Decision.Reason)
	}
	width := 0
	for _, t := range e.Grants {
		width = max(width, len(t.Name))
	}
	fmt.Fprintf(&b, "grants (%d):\n", len(e.Grants))
	for _, t := range e.Grants {
		line := fmt.Sprintf("  %-*s  %-5s  subject=%-7s  secret=%-7s  delivery=%-3s", width, t.Name, t.Effect,
			yesNo(t.SubjectMatched, t.SubjectIndex), yesNo(t.SecretMatched, t.SecretIndex), yesNo(t.DeliveryMatched, -1))
		if t.Matched {
			line += "  => match"
		}
		b.WriteString(strings.TrimRight(line, " "))
		b.WriteByte('\n')
	}
	if e.Hint != "" {
		fmt.Fprintf(&b, "hint: %s\n", e.Hint)
	}
	return b.String()
}

func yesNo(ok bool, idx int) string {
	if !ok {
		return "no"
	}
	if idx >= 0 {
		return fmt.Sprintf("yes[%d]", idx)
	}
	return "yes"
}
