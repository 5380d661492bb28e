package grant

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Request is one workload asking for one secret through one channel. Identities are plain
// strings checked by the caller (broker/identity); the Set only compares them.
type Request struct {
	// Namespace and ServiceAccount of the verified workload; both empty for a SPIFFE-only caller.
	Namespace, ServiceAccount string
	// SPIFFEID is the caller's SPIFFE ID in string form; may be empty.
	SPIFFEID string
	// Secret is the name asked for. It must match a grant's secret name exactly.
	Secret string
	// Delivery is the channel (CSI or GRPC). Any other value, including empty, matches no grant.
	Delivery Delivery
}

// Decision is the outcome of Evaluate.
type Decision struct {
	// Allowed is true only when an Allow grant matched and no Deny grant did.
	Allowed bool
	// Grant is the name of the grant that allowed or denied; empty when no grant matched.
	Grant string
	// Secret is a copy of the matching secret clause (with defaults applied) when allowed.
	Secret *SecretGrant
	// Reason is human readable and safe to show the caller: it never says whether the secret
	// exists anywhere, only whether a grant covers this request.
	Reason string
}

// Set is an immutable, validated snapshot of grants, safe for concurrent use.
//
// Evaluation rule: default deny; a request is matched by a grant when one of the grant's
// subjects matches the caller, one of its secret clauses has exactly the requested name, and
// its delivery list is empty or contains the requested channel. If any Deny grant matches, the
// request is denied, naming the Deny grant with the lexicographically smallest name. Otherwise,
// if any Allow grant matches, the request is allowed by the Allow grant with the
// lexicographically smallest name (so that the chosen grant, and the file layout, TTL and share
// mode it carries, never depend on load order). Otherwise it is denied.
type Set struct {
	grants   []compiled       // sorted by name
	bySecret map[string]*refs // secret name → clauses naming it
}

// refs are the clauses naming one secret, Deny grants apart so that Evaluate can check them
// first and then stop at the first matching Allow; both lists are in grant-name order.
type refs struct{ deny, allow []ref }

type compiled struct {
	g        AccessGrant // a defaulted private copy
	subjects []compiledSubject
	delivery map[Delivery]bool // nil: every channel
}

type compiledSubject struct {
	namespace, serviceAccount string
	spiffe                    *spiffePattern
}

type ref struct{ grant, secret int }

// NewSet validates every grant and builds a Set of defaulted copies. Invalid grants are
// reported together (Errors, matching ErrInvalidGrant, each prefixed with its grant's name);
// two grants with the same name are an error matching ErrDuplicateGrant.
func NewSet(grants []AccessGrant) (*Set, error) {
	var (
		errs Errors
		dups []string
		seen = make(map[string]bool, len(grants))
		cs   = make([]compiled, 0, len(grants))
	)
	for i := range grants {
		g := &grants[i]
		if err := Validate(g); err != nil {
			var ve Errors
			if !errors.As(err, &ve) {
				return nil, err
			}
			for _, fe := range ve {
				c := *fe
				if c.Document == "" {
					c.Document = fmt.Sprintf("grant %s", quote(g.Name))
					if g.Name == "" {
						c.Document = fmt.Sprintf("grants[%d]", i)
					}
				}
				errs = append(errs, &c)
			}
			continue
		}
		if seen[g.Name] {
			dups = append(dups, g.Name)
			continue
		}
		seen[g.Name] = true
		cs = append(cs, compile(g))
	}
	if len(dups) > 0 {
		return nil, fmt.Errorf("%w: %s", ErrDuplicateGrant, strings.Join(quoteAll(dups), ", "))
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return build(cs), nil
}

// Merge combines the Sets of several sources into one. A grant name present in two sets is an
// error matching ErrDuplicateGrant; the caller logs it and keeps its previous merged Set. Nil
// sets are skipped.
func Merge(sets ...*Set) (*Set, error) {
	n := 0
	for _, s := range sets {
		if s != nil {
			n += len(s.grants)
		}
	}
	cs := make([]compiled, 0, n)
	seen := make(map[string]bool, n)
	var dups []string
	for _, s := range sets {
		if s == nil {
			continue
		}
		for _, c := range s.grants {
			if seen[c.g.Name] {
				dups = append(dups, c.g.Name)
				continue
			}
			seen[c.g.Name] = true
			cs = append(cs, c) // compiled values are never mutated, so sharing them is safe
		}
	}
	if len(dups) > 0 {
		slices.Sort(dups)
		return nil, fmt.Errorf("%w: %s defined by more than one source", ErrDuplicateGrant, strings.Join(quoteAll(slices.Compact(dups)), ", "))
	}
	return build(cs), nil
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = quote(s)
	}
	return out
}

func compile(g *AccessGrant) compiled {
	c := compiled{g: cloneGrant(g)}
	Default(&c.g)
	for _, s := range c.g.Spec.Subjects {
		cs := compiledSubject{namespace: s.Namespace, serviceAccount: s.ServiceAccount}
		if s.SPIFFEID != "" {
			p, _ := parseSPIFFE(s.SPIFFEID, true) // validated
			cs.spiffe = &p
		}
		c.subjects = append(c.subjects, cs)
	}
	if len(c.g.Spec.Delivery) > 0 {
		c.delivery = make(map[Delivery]bool, len(c.g.Spec.Delivery))
		for _, d := range c.g.Spec.Delivery {
			c.delivery[d] = true
		}
	}
	return c
}

func build(cs []compiled) *Set {
	slices.SortFunc(cs, func(a, b compiled) int { return strings.Compare(a.g.Name, b.g.Name) })
	s := &Set{grants: cs, bySecret: make(map[string]*refs)}
	for gi := range cs {
		for si, sg := range cs[gi].g.Spec.Secrets {
			rs := s.bySecret[sg.Name]
			if rs == nil {
				rs = &refs{}
				s.bySecret[sg.Name] = rs
			}
			if cs[gi].g.Spec.Effect == EffectDeny {
				rs.deny = append(rs.deny, ref{gi, si})
			} else {
				rs.allow = append(rs.allow, ref{gi, si})
			}
		}
	}
	return s
}

// Len is the number of grants in the Set.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.grants)
}

// Grants returns copies of the grants, with defaults applied, sorted by name.
func (s *Set) Grants() []AccessGrant {
	if s == nil {
		return nil
	}
	out := make([]AccessGrant, len(s.grants))
	for i := range s.grants {
		out[i] = cloneGrant(&s.grants[i].g)
	}
	return out
}

// requestID is the caller's SPIFFE ID, parsed at most once per request.
type requestID struct {
	parsed bool
	ok     bool
	id     spiffePattern
}

func (r *requestID) get(s string) (spiffePattern, bool) {
	if !r.parsed {
		r.parsed = true
		if s != "" {
			id, detail := parseSPIFFE(s, false)
			r.id, r.ok = id, detail == ""
		}
	}
	return r.id, r.ok
}

// matchSubject returns the index of the first subject clause matching r, or -1.
func (c *compiled) matchSubject(r *Request, rid *requestID) int {
	for i := range c.subjects {
		cs := &c.subjects[i]
		if cs.spiffe != nil {
			if id, ok := rid.get(r.SPIFFEID); ok && cs.spiffe.match(id) {
				return i
			}
			continue
		}
		if r.Namespace == "" || r.ServiceAccount == "" {
			continue
		}
		if (cs.namespace == "*" || cs.namespace == r.Namespace) &&
			(cs.serviceAccount == "*" || cs.serviceAccount == r.ServiceAccount) {
			return i
		}
	}
	return -1
}

func (c *compiled) matchDelivery(d Delivery) bool {
	switch d {
	case DeliveryCSI, DeliveryGRPC:
		return c.delivery == nil || c.delivery[d]
	case DeliveryGRPCSealed: // sealed is gRPC too
		return c.delivery == nil || c.delivery[d] || c.delivery[DeliveryGRPC]
	}
	return false
}

// Evaluate decides r under the rule documented on Set. It never fails: a malformed request
// simply matches no grant and is denied.
func (s *Set) Evaluate(r Request) Decision {
	if s == nil {
		return denyNoGrant(&r)
	}
	rs := s.bySecret[r.Secret]
	if rs == nil {
		return denyNoGrant(&r)
	}
	var rid requestID
	// Both lists are in grant-name order, so the first match in each is the smallest name.
	for _, rf := range rs.deny {
		if c := &s.grants[rf.grant]; c.matchDelivery(r.Delivery) && c.matchSubject(&r, &rid) >= 0 {
			return Decision{Grant: c.g.Name, Reason: denyReason(&r, c.g.Name)}
		}
	}
	for _, rf := range rs.allow {
		if c := &s.grants[rf.grant]; c.matchDelivery(r.Delivery) && c.matchSubject(&r, &rid) >= 0 {
			sg := cloneSecret(&c.g.Spec.Secrets[rf.secret])
			return Decision{
				Allowed: true,
				Grant:   c.g.Name,
				Secret:  &sg,
				Reason:  fmt.Sprintf("allowed by grant %s", quote(c.g.Name)),
			}
		}
	}
	return denyNoGrant(&r)
}

func denyNoGrant(r *Request) Decision {
	return Decision{Reason: fmt.Sprintf("no grant allows %s to receive secret %s by %s", describeCaller(r), quote(r.Secret), describeDelivery(r.Delivery))}
}

func denyReason(r *Request, grant string) string {
	return fmt.Sprintf("grant %s denies %s access to secret %s", quote(grant), describeCaller(r), quote(r.Secret))
}

func describeCaller(r *Request) string {
	switch {
	case r.Namespace != "" || r.ServiceAccount != "":
		s := fmt.Sprintf("service account %s", quote(r.Namespace+"/"+r.ServiceAccount))
		if r.SPIFFEID != "" {
			s += fmt.Sprintf(" (%s)", quote(r.SPIFFEID))
		}
		return s
	case r.SPIFFEID != "":
		return "SPIFFE ID " + quote(r.SPIFFEID)
	default:
		return "an anonymous caller"
	}
}

func describeDelivery(d Delivery) string {
	switch d {
	case DeliveryCSI, DeliveryGRPC:
		return string(d)
	case DeliveryGRPCSealed:
		return "GRPC with a sealed response"
	case "":
		return "an unspecified delivery"
	default:
		return "delivery " + quote(string(d))
	}
}
