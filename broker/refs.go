package broker

import (
	"slices"

	"github.com/keywarden/keywarden/broker/source"
)

// SourceRefs returns the cache references that the secret name resolves to under the grants
// in force: one per distinct source clause naming it (grants may name the same secret with
// different sources). Used by admin actions (rotate now, revoke) that act on a secret
// everywhere on the node.
func (b *Broker) SourceRefs(name string) []source.Ref {
	var out []source.Ref
	for _, sg := range b.ListGrants() {
		for i := range sg.Grant.Spec.Secrets {
			s := &sg.Grant.Spec.Secrets[i]
			if s.Name != name {
				continue
			}
			ref, _, err := resolve(s)
			if err != nil || slices.Contains(out, ref) {
				continue
			}
			out = append(out, ref)
		}
	}
	slices.SortFunc(out, func(a, b source.Ref) int {
		if a.Source != b.Source {
			if a.Source < b.Source {
				return -1
			}
			return 1
		}
		switch {
		case a.Path < b.Path:
			return -1
		case a.Path > b.Path:
			return 1
		}
		return 0
	})
	return out
}

// SecretNames returns every secret name that the grants of sources other than skip mention,
// sorted.
func (b *Broker) SecretNames(skip string) []string {
	var out []string
	for _, sg := range b.ListGrants() {
		if sg.Source == skip {
			continue
		}
		for _, s := range sg.Grant.Spec.Secrets {
			out = append(out, s.Name)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// GrantsChanged returns a channel closed at the next change of the grants in force.
func (b *Broker) GrantsChanged() <-chan struct{} { return b.grantsChangedCh() }
