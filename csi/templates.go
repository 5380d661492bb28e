package csi

import (
	"context"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/source"
)

// renderTimeout bounds one template's rendering (its functions check it; the size budget
// bounds the rest).
const renderTimeout = 2 * time.Second

// fileTemplate is one file of a volume rendered from a template: from the volume's
// "template/<path>" attributes, or from the spec.templates of the grant the volume names.
type fileTemplate struct {
	path, src, origin string
	mode              fs.FileMode // 0: the volume's mode
}

// templatesFor returns the templates of a volume: the grant's (when the volume names a
// grant) and the attributes'. A path in both is an error, not an override.
func (d *Driver) templatesFor(req Request) ([]fileTemplate, error) {
	var out []fileTemplate
	if req.Grant != "" {
		for i, t := range d.cfg.Broker.GrantTemplates(req.Grant) {
			ft := fileTemplate{path: t.Path, src: t.Template, origin: fmt.Sprintf("grant %q spec.templates[%d]", req.Grant, i)}
			if t.Mode != nil {
				ft.mode = fs.FileMode(*t.Mode)
			}
			out = append(out, ft)
		}
	}
	for _, p := range slices.Sorted(maps.Keys(req.Templates)) {
		for _, g := range out {
			if g.path == p {
				return nil, invalid("attribute %q: the grant %q already renders this file: remove one of them", AttrTemplatePrefix+p, req.Grant)
			}
		}
		out = append(out, fileTemplate{path: p, src: req.Templates[p], origin: fmt.Sprintf("attribute %q", AttrTemplatePrefix+p)})
	}
	return out, nil
}

// renderTemplates renders tmpls over the volume's secrets (raw values, whatever the volume's
// encoding) into out, next to the secrets' own files, so that all of them go into one swap.
func renderTemplates(tmpls []fileTemplate, names []string, secrets map[string]*source.Secret, mode fs.FileMode, out map[string]File) error {
	if len(tmpls) == 0 {
		return nil
	}
	data := make(grant.SecretData, len(names))
	for _, n := range names {
		s := secrets[n]
		if s == nil {
			continue
		}
		keys := make(map[string]string, len(s.Data))
		for k, v := range s.Data {
			keys[k] = string(v)
		}
		data[n] = keys
	}
	for _, t := range tmpls {
		if err := validateVolumePath(t.path); err != nil {
			return invalid("%s: %v", t.origin, err)
		}
		if _, dup := out[t.path]; dup {
			return invalid("%s: the file %q is also a secret's file: give the template another path or map the key elsewhere with %q", t.origin, t.path, AttrFiles)
		}
		pt, err := grant.ParseTemplate(t.src)
		if err != nil {
			return invalid("%s: %v", t.origin, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), renderTimeout)
		b, err := pt.Render(ctx, data)
		cancel()
		if err != nil {
			// A missing key or too much output: the publish fails, a rotation keeps the old
			// files (the caller writes nothing).
			return invalid("%s: the template cannot be rendered: %s", t.origin, strings.TrimPrefix(err.Error(), grant.ErrRender.Error()+": "))
		}
		m := mode
		if t.mode != 0 {
			m = t.mode
		}
		out[t.path] = File{Data: b, Mode: m}
	}
	return nil
}
