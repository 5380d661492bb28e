package grant

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"text/template/parse"
)

// Templates render several keys of several secrets into one file. The language is Go's
// text/template with a small fixed set of functions and without the parts that could loop or
// recurse (range, define, block, template): a template's cost is then bounded by its size, and
// every function charges what it produces to a per-render budget, so neither a doubling chain of
// variables nor a huge output can exhaust the daemon. No function reads files, the environment
// or anything but the secrets handed to Render.

// Template limits.
const (
	// MaxTemplateLen is the longest template source, in bytes.
	MaxTemplateLen = 16 << 10
	// MaxRenderedLen is the largest rendered file, in bytes.
	MaxRenderedLen = 1 << 20
	// renderBudget bounds the bytes all function calls of one render may produce.
	renderBudget = 4 * MaxRenderedLen
)

var (
	// ErrTemplate is matched by every error of ParseTemplate (a *TemplateError).
	ErrTemplate = errors.New("invalid template")
	// ErrRender is matched by every error of Template.Render.
	ErrRender = errors.New("template render failed")
)

// TemplateError is a template that does not parse or uses what is not allowed, with where.
type TemplateError struct {
	// Line and Column are 1-based; Column counts bytes. Zero when unknown.
	Line, Column int
	// Detail says what is wrong and how to fix it.
	Detail string
}

// Error implements error.
func (e *TemplateError) Error() string {
	switch {
	case e.Line > 0 && e.Column > 0:
		return fmt.Sprintf("line %d, column %d: %s", e.Line, e.Column, e.Detail)
	case e.Line > 0:
		return fmt.Sprintf("line %d: %s", e.Line, e.Detail)
	}
	return e.Detail
}

// Is makes a TemplateError match ErrTemplate.
func (e *TemplateError) Is(target error) bool { return target == ErrTemplate }

// TemplateFuncs are the functions a template may call, builtins of text/template included.
var TemplateFuncs = []string{
	"secret", "quote", "squote", "json", "b64enc", "b64dec", "urlquery", "trim", "upper", "lower",
	"default", "join", "list", "print",
	"and", "or", "not", "eq", "ne", "lt", "le", "gt", "ge", "index", "len", "slice",
}

// Template is a parsed, checked template.
type Template struct {
	t    *template.Template
	refs []string
}

// Secrets returns the secret names the template names literally (.name.key, $.name.key,
// secret "name" "key"), sorted and distinct. Names reached dynamically are not listed.
func (t *Template) Secrets() []string { return slices.Clone(t.refs) }

const tmplName = "t"

// ParseTemplate parses and checks src. The error is a *TemplateError with the line and column
// of the problem and how to fix it.
func ParseTemplate(src string) (*Template, error) {
	if src == "" {
		return nil, &TemplateError{Detail: "the template is empty: write the file's content, e.g. DB_USER={{ .db.username }}"}
	}
	if len(src) > MaxTemplateLen {
		return nil, &TemplateError{Detail: fmt.Sprintf("the template is %d bytes, at most %d are allowed", len(src), MaxTemplateLen)}
	}
	t, err := template.New(tmplName).Option("missingkey=error").Funcs(funcs(nil)).Parse(src)
	if err != nil {
		return nil, parseError(src, err)
	}
	c := checker{src: src, tree: t.Tree, refs: map[string]bool{}}
	if len(t.Templates()) > 1 {
		// A define or block: find it for the position.
		return nil, c.findDefine()
	}
	if t.Tree == nil || t.Root == nil {
		return nil, &TemplateError{Detail: "the template is empty: write the file's content"}
	}
	if err := c.list(t.Root, true); err != nil {
		return nil, err
	}
	refs := make([]string, 0, len(c.refs))
	for r := range c.refs {
		refs = append(refs, r)
	}
	slices.Sort(refs)
	return &Template{t: t, refs: refs}, nil
}

// parseErrLine matches text/template's "template: t:LINE: detail".
var parseErrLine = regexp.MustCompile(`^template: ` + tmplName + `:(\d+):(?:(\d+):)? ?(.*)$`)

// startedAt is how text/template points back at where an unclosed action began.
var startedAt = regexp.MustCompile(` started at ` + tmplName + `:(\d+)`)

// quotedToken matches a token that a parse error quotes.
var quotedToken = regexp.MustCompile(`"((?:[^"\\]|\\.)*)"|<([^>]*)>|'([^']+)'`)

// parseError turns a text/template parse error into a TemplateError. text/template reports
// the line only; the column is where the quoted token of the message first appears on that
// line, else the line's first "{{".
func parseError(src string, err error) *TemplateError {
	msg := oneLine(err.Error())
	m := parseErrLine.FindStringSubmatch(msg)
	if m == nil {
		return &TemplateError{Detail: fixHint(strings.TrimPrefix(msg, "template: "))}
	}
	line, _ := strconv.Atoi(m[1])
	col, _ := strconv.Atoi(m[2])
	detail := m[3]
	if sm := startedAt.FindStringSubmatch(detail); sm != nil {
		// "unclosed action started at t:2": the problem is where the action began.
		line, _ = strconv.Atoi(sm[1])
		detail = startedAt.ReplaceAllString(detail, "")
	}
	if col == 0 {
		col = columnOf(src, line, detail)
	}
	return &TemplateError{Line: line, Column: col, Detail: fixHint(detail)}
}

func columnOf(src string, line int, detail string) int {
	lines := strings.Split(src, "\n")
	if line < 1 || line > len(lines) {
		return 0
	}
	text := lines[line-1]
	for _, q := range quotedToken.FindAllStringSubmatch(detail, -1) {
		tok := q[2] + q[3]
		if q[1] != "" {
			tok = q[1]
			if u, err := strconv.Unquote(`"` + q[1] + `"`); err == nil {
				tok = u
			}
		}
		if tok == "" {
			continue
		}
		if k := strings.Index(text, tok); k >= 0 {
			return k + 1
		}
	}
	if k := strings.Index(text, "{{"); k >= 0 {
		return k + 1
	}
	return 1
}

// fixHint adds how to fix the common parse errors.
func fixHint(detail string) string {
	switch {
	case strings.Contains(detail, "function") && strings.Contains(detail, "not defined"):
		return detail + ": use one of " + strings.Join(TemplateFuncs, ", ")
	case strings.Contains(detail, `unexpected "}"`):
		return detail + `: close the action with "}}"`
	case strings.Contains(detail, "unclosed action"), strings.Contains(detail, "unterminated"):
		return detail + `: close every "{{" with "}}" and every quote`
	case strings.Contains(detail, "unexpected EOF"), strings.Contains(detail, "missing end"):
		return detail + `: close every if and with with {{ end }}`
	case strings.Contains(detail, "bad character"):
		return detail + `: secret names with '-' or '.' are reached with {{ secret "name" "key" }} or {{ index . "name" "key" }}`
	}
	return detail
}

type checker struct {
	src  string
	tree *parse.Tree
	refs map[string]bool
}

func (c *checker) at(n parse.Node, format string, args ...any) *TemplateError {
	e := &TemplateError{Detail: fmt.Sprintf(format, args...)}
	if pos := int(n.Position()); pos >= 0 && pos <= len(c.src) {
		before := c.src[:pos]
		e.Line = strings.Count(before, "\n") + 1
		e.Column = pos - strings.LastIndexByte(before, '\n')
	}
	return e
}

func (c *checker) findDefine() *TemplateError {
	for _, kw := range []string{"define", "block"} {
		re := regexp.MustCompile(`\{\{-?\s*` + kw + `\b`)
		if loc := re.FindStringIndex(c.src); loc != nil {
			line := strings.Count(c.src[:loc[0]], "\n") + 1
			col := loc[0] - strings.LastIndexByte(c.src[:loc[0]], '\n')
			return &TemplateError{Line: line, Column: col, Detail: kw + " is not allowed: write the file in one template, without define, block or template"}
		}
	}
	return &TemplateError{Detail: "define and block are not allowed: write the file in one template"}
}

// list checks a list of nodes. topDot is true where dot is the secrets map (outside with).
func (c *checker) list(l *parse.ListNode, topDot bool) error {
	if l == nil {
		return nil
	}
	for _, n := range l.Nodes {
		if err := c.node(n, topDot); err != nil {
			return err
		}
	}
	return nil
}

func (c *checker) node(n parse.Node, topDot bool) error {
	switch n := n.(type) {
	case *parse.TextNode, *parse.CommentNode:
		return nil
	case *parse.ActionNode:
		return c.pipe(n.Pipe, topDot)
	case *parse.IfNode:
		return c.branch(&n.BranchNode, topDot, topDot)
	case *parse.WithNode:
		return c.branch(&n.BranchNode, topDot, false)
	case *parse.RangeNode:
		return c.at(n, "range is not allowed: join lists with {{ join \",\" (list .a.x .b.y) }}")
	case *parse.TemplateNode:
		return c.at(n, "template is not allowed: write the file in one template, without define, block or template")
	case *parse.BreakNode, *parse.ContinueNode:
		return c.at(n, "break and continue are not allowed")
	}
	return c.at(n, "this construct is not allowed")
}

func (c *checker) branch(b *parse.BranchNode, topDot, bodyTopDot bool) error {
	if err := c.pipe(b.Pipe, topDot); err != nil {
		return err
	}
	if err := c.list(b.List, bodyTopDot); err != nil {
		return err
	}
	return c.list(b.ElseList, topDot)
}

func (c *checker) pipe(p *parse.PipeNode, topDot bool) error {
	if p == nil {
		return nil
	}
	for _, cmd := range p.Cmds {
		for i, arg := range cmd.Args {
			if err := c.arg(arg, topDot); err != nil {
				return err
			}
			if id, ok := arg.(*parse.IdentifierNode); ok && i == 0 && id.Ident == "secret" && len(cmd.Args) > 1 {
				if s, ok := cmd.Args[1].(*parse.StringNode); ok {
					c.refs[s.Text] = true
				}
			}
		}
	}
	return nil
}

func (c *checker) arg(n parse.Node, topDot bool) error {
	switch n := n.(type) {
	case *parse.IdentifierNode:
		if !slices.Contains(TemplateFuncs, n.Ident) {
			return c.at(n, "function %s is not allowed: use one of %s", quote(n.Ident), strings.Join(TemplateFuncs, ", "))
		}
	case *parse.FieldNode:
		if topDot && len(n.Ident) > 0 {
			c.refs[n.Ident[0]] = true
		}
	case *parse.VariableNode:
		if len(n.Ident) > 1 && n.Ident[0] == "$" {
			c.refs[n.Ident[1]] = true
		}
	case *parse.PipeNode:
		return c.pipe(n, topDot)
	case *parse.ChainNode:
		return c.arg(n.Node, topDot)
	}
	return nil
}

// SecretData is what a template renders from: secret name → key → value.
type SecretData map[string]map[string]string

// Render executes t over data. It stops with an error (matching ErrRender) when ctx ends, the
// output passes MaxRenderedLen, the functions produce more than their budget, or the template
// reaches a secret or key that data does not hold. The error says where (line, column) and
// never contains a secret value.
func (t *Template) Render(ctx context.Context, data SecretData) ([]byte, error) {
	st := &renderState{ctx: ctx, data: data, budget: renderBudget}
	tc, err := t.t.Clone()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRender, err)
	}
	tc.Funcs(funcs(st))
	out := &cappedBuffer{max: MaxRenderedLen}
	// Dot is the secrets map: .db.password works for names that are identifiers; a missing
	// secret or key is an error (missingkey=error), never an empty string.
	if err := tc.Execute(out, map[string]map[string]string(data)); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrRender, scrub(renderError(err), data))
	}
	return out.Bytes(), nil
}

var execErrPos = regexp.MustCompile(`^template: ` + tmplName + `:(\d+):(\d+): (?:executing "` + tmplName + `" at <[^>]*>: )?(.*)$`)

func renderError(err error) string {
	msg := oneLine(err.Error())
	if m := execErrPos.FindStringSubmatch(msg); m != nil {
		col, _ := strconv.Atoi(m[2])
		detail := strings.TrimPrefix(m[3], "error calling ")
		if strings.HasPrefix(detail, "map has no entry for key") {
			detail += ": the volume (or grant) has no secret or key of that name; check the spelling, or add the secret next to the template"
		}
		return fmt.Sprintf("line %s, column %d: %s", m[1], col+1, detail)
	}
	return strings.TrimPrefix(msg, "template: ")
}

// scrub replaces any secret value of 4 bytes or more that an error message might carry.
func scrub(msg string, data SecretData) string {
	for _, keys := range data {
		for _, v := range keys {
			if len(v) >= 4 {
				msg = strings.ReplaceAll(msg, v, "[REDACTED]")
			}
		}
	}
	return msg
}

type renderState struct {
	ctx    context.Context
	data   SecretData
	budget int
}

var errBudget = errors.New("the template produces too much output: simplify it")

// charge accounts for n produced bytes and checks the context.
func (st *renderState) charge(n int) error {
	if st == nil {
		return nil
	}
	if err := st.ctx.Err(); err != nil {
		return errors.New("rendering canceled")
	}
	st.budget -= n
	if st.budget < 0 {
		return errBudget
	}
	return nil
}

// funcs returns the function map bound to st (nil: parse-time stubs).
func funcs(st *renderState) template.FuncMap {
	str := func(s string) (string, error) { return s, st.charge(len(s)) }
	return template.FuncMap{
		"secret": func(name, key string) (string, error) {
			if st == nil {
				return "", nil
			}
			keys, ok := st.data[name]
			if !ok {
				return "", fmt.Errorf("secret %s is not among this file's secrets: list it in the volume (or grant) next to the template", quote(name))
			}
			v, ok := keys[key]
			if !ok {
				return "", fmt.Errorf("secret %s has no key %s", quote(name), quote(key))
			}
			return str(v)
		},
		"quote":  func(s string) (string, error) { return str(strconv.Quote(s)) },
		"squote": func(s string) (string, error) { return str("'" + strings.ReplaceAll(s, "'", `'\''`) + "'") },
		"json": func(s string) (string, error) {
			b, _ := json.Marshal(s)
			return str(string(b))
		},
		"b64enc": func(s string) (string, error) { return str(base64.StdEncoding.EncodeToString([]byte(s))) },
		"b64dec": func(s string) (string, error) {
			b, err := base64.StdEncoding.DecodeString(s)
			if err != nil {
				return "", errors.New("b64dec: the value is not standard base64")
			}
			return str(string(b))
		},
		"urlquery": func(s string) (string, error) { return str(url.QueryEscape(s)) },
		"trim":     func(s string) (string, error) { return str(strings.TrimSpace(s)) },
		"upper":    func(s string) (string, error) { return str(strings.ToUpper(s)) },
		"lower":    func(s string) (string, error) { return str(strings.ToLower(s)) },
		"default": func(def, v string) (string, error) {
			if v == "" {
				return str(def)
			}
			return str(v)
		},
		"list": func(items ...string) ([]string, error) {
			n := 0
			for _, s := range items {
				n += len(s)
			}
			return items, st.charge(n)
		},
		"join": func(sep string, items []string) (string, error) {
			n := len(sep) * len(items)
			for _, s := range items {
				n += len(s)
			}
			if err := st.charge(n); err != nil {
				return "", err
			}
			return strings.Join(items, sep), nil
		},
		"print": func(args ...string) (string, error) { return str(strings.Join(args, "")) },
	}
}

// cappedBuffer fails a write past max, which stops the execution.
type cappedBuffer struct {
	bytes.Buffer
	max int
}

var errTooLarge = fmt.Errorf("the rendered file is larger than %d bytes", MaxRenderedLen)

func (b *cappedBuffer) Write(p []byte) (int, error) {
	if b.Len()+len(p) > b.max {
		return 0, errTooLarge
	}
	return b.Buffer.Write(p)
}
