package broker

import (
	"fmt"
	"slices"

	"github.com/keywarden/keywarden/broker/grant"
)

// ExpandSecrets turns a consumer's selection into the secret names it follows: names as
// given, or, when grantName is set, every secret the grant of that name in force names, in the
// grant's order. Expansion does not authorize: each name is still checked for the caller by
// GetSecret and Watch, so a caller the grant does not cover gets the usual permission-denied
// answer for its first secret. A grant that is not in force, or names no secrets or more than
// MaxWatchNames, is ErrInvalidArgument.
func (b *Broker) ExpandSecrets(grantName string, names []string) ([]string, error) {
	if grantName == "" {
		return slices.Clone(names), nil
	}
	for _, g := range b.grants.Load().Grants() {
		if g.Name != grantName {
			continue
		}
		var out []string
		for _, s := range g.Spec.Secrets {
			if !slices.Contains(out, s.Name) {
				out = append(out, s.Name)
			}
		}
		if len(out) == 0 || len(out) > MaxWatchNames {
			break
		}
		return out, nil
	}
	return nil, newError(ErrInvalidArgument, fmt.Sprintf("grant %q is not in force or names no secrets (or more than %d)", grantName, MaxWatchNames))
}

// GrantTemplates returns the spec.templates of the grant in force named grantName (nil when
// it has none or is not in force). Rendering them does not authorize anything: the CSI layer
// renders only secrets the caller was given through GetSecret.
func (b *Broker) GrantTemplates(grantName string) []grant.TemplateFile {
	for _, g := range b.grants.Load().Grants() {
		if g.Name == grantName {
			return g.Spec.Templates
		}
	}
	return nil
}
