package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// The checks below read the outputs with the standard library only, not with
// go-containerregistry, so that they do not share the builder's assumptions.

const testVersion = "v0.0.0-imagetest"

var testEpoch = time.Unix(1700000000, 0).UTC()

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// keywardenBinary builds cmd/keywarden once per test run, the way `make image` does, for the
// host's architecture so that the test can run it.
func keywardenBinary(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the keywarden binary; skipped with -short")
	}
	if runtime.GOOS != "linux" {
		t.Skip("the image binary is linux-only and the test runs it")
	}
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "keywarden-image-test-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "keywarden")
		cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false",
			"-ldflags", "-s -w -buildid= -X main.version="+testVersion,
			"-o", binPath, "github.com/keywarden/keywarden/cmd/keywarden")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build ./cmd/keywarden: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

func testConfig(bin, out string) Config {
	return Config{
		Binary:   bin,
		Version:  testVersion,
		Revision: "0123456789abcdef0123456789abcdef01234567",
		Created:  testEpoch,
		OutDir:   out,
		// The production level costs ten times more under -race; determinism does not
		// depend on the level.
		GzipLevel: gzip.BestSpeed,
	}
}

func TestBuild_layoutAndTarball(t *testing.T) {
	bin := keywardenBinary(t)
	ctx := context.Background()

	out1, out2 := t.TempDir(), t.TempDir()
	res1, err := Build(ctx, testConfig(bin, out1))
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	res2, err := Build(ctx, testConfig(bin, out2))
	if err != nil {
		t.Fatalf("second Build: %v", err)
	}
	if res1.Digest != res2.Digest {
		t.Errorf("two builds of the same binary differ: %s and %s", res1.Digest, res2.Digest)
	}

	img := readLayout(t, filepath.Join(out1, "oci"))
	if img.digest != res1.Digest.String() {
		t.Errorf("index.json names manifest %s, Build returned %s", img.digest, res1.Digest)
	}
	if other := readLayout(t, filepath.Join(out2, "oci")); other.digest != img.digest {
		t.Errorf("second layout's manifest is %s, first's %s", other.digest, img.digest)
	}

	checkConfig(t, img.config)
	files := checkLayer(t, img)
	checkBinary(t, files[tarName(binaryPath)])

	sbom := files[tarName(sbomPath)]
	checkSBOM(t, sbom)
	outside, err := os.ReadFile(filepath.Join(out1, "sbom.spdx.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(outside, sbom) {
		t.Error("dist sbom.spdx.json differs from the SBOM inside the image")
	}

	checkTarball(t, filepath.Join(out1, "keywarden-"+testVersion+".tar"), img)
}

// layoutImage is one image read from an OCI layout.
type layoutImage struct {
	dir          string
	digest       string // manifest digest
	manifest     ociManifest
	configDigest string
	configRaw    []byte
	config       ociConfig
}

type ociDescriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations"`
}

type ociManifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	Config        ociDescriptor     `json:"config"`
	Layers        []ociDescriptor   `json:"layers"`
	Annotations   map[string]string `json:"annotations"`
}

type ociConfig struct {
	Created      string `json:"created"`
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Config       struct {
		User       string            `json:"User"`
		Env        []string          `json:"Env"`
		Entrypoint []string          `json:"Entrypoint"`
		Cmd        []string          `json:"Cmd"`
		WorkingDir string            `json:"WorkingDir"`
		Labels     map[string]string `json:"Labels"`
	} `json:"config"`
	RootFS struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

// readBlob reads a blob of the layout and checks that its content matches its digest.
func readBlob(t *testing.T, dir string, d ociDescriptor) []byte {
	t.Helper()
	hexd, ok := strings.CutPrefix(d.Digest, "sha256:")
	if !ok {
		t.Fatalf("digest %q is not sha256", d.Digest)
	}
	b, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", hexd))
	if err != nil {
		t.Fatalf("blob %s: %v", d.Digest, err)
	}
	if got := sha256Hex(b); got != hexd {
		t.Fatalf("blob %s has content with digest sha256:%s", d.Digest, got)
	}
	if int64(len(b)) != d.Size {
		t.Errorf("blob %s: descriptor size %d, file %d bytes", d.Digest, d.Size, len(b))
	}
	return b
}

func readLayout(t *testing.T, dir string) layoutImage {
	t.Helper()
	var ociLayout struct {
		Version string `json:"imageLayoutVersion"`
	}
	readJSON(t, filepath.Join(dir, "oci-layout"), &ociLayout)
	if ociLayout.Version != "1.0.0" {
		t.Errorf("oci-layout version %q", ociLayout.Version)
	}
	var index struct {
		SchemaVersion int             `json:"schemaVersion"`
		Manifests     []ociDescriptor `json:"manifests"`
	}
	readJSON(t, filepath.Join(dir, "index.json"), &index)
	if index.SchemaVersion != 2 || len(index.Manifests) != 1 {
		t.Fatalf("index.json: schemaVersion %d with %d manifests, want 2 with 1", index.SchemaVersion, len(index.Manifests))
	}
	desc := index.Manifests[0]
	if desc.MediaType != "application/vnd.oci.image.manifest.v1+json" {
		t.Errorf("index.json manifest media type %q", desc.MediaType)
	}
	if got := desc.Annotations["org.opencontainers.image.ref.name"]; got != testVersion {
		t.Errorf("index.json ref.name %q, want %q", got, testVersion)
	}

	img := layoutImage{dir: dir, digest: desc.Digest}
	if err := json.Unmarshal(readBlob(t, dir, desc), &img.manifest); err != nil {
		t.Fatalf("manifest: %v", err)
	}
	m := img.manifest
	if m.SchemaVersion != 2 || m.MediaType != desc.MediaType {
		t.Errorf("manifest schemaVersion %d mediaType %q", m.SchemaVersion, m.MediaType)
	}
	if m.Config.MediaType != "application/vnd.oci.image.config.v1+json" {
		t.Errorf("config media type %q", m.Config.MediaType)
	}
	if len(m.Layers) != 1 || m.Layers[0].MediaType != "application/vnd.oci.image.layer.v1.tar+gzip" {
		t.Fatalf("layers %+v, want one OCI gzip layer", m.Layers)
	}
	if m.Annotations["org.opencontainers.image.version"] != testVersion {
		t.Errorf("manifest annotations %v lack the version", m.Annotations)
	}
	img.configDigest = m.Config.Digest
	img.configRaw = readBlob(t, dir, m.Config)
	if err := json.Unmarshal(img.configRaw, &img.config); err != nil {
		t.Fatalf("config: %v", err)
	}
	return img
}

func checkConfig(t *testing.T, c ociConfig) {
	t.Helper()
	eq := func(what string, got, want any) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("config %s = %v, want %v", what, got, want)
		}
	}
	eq("os", c.OS, "linux")
	eq("architecture", c.Architecture, runtime.GOARCH)
	eq("created", c.Created, testEpoch.Format(time.RFC3339))
	eq("Entrypoint", c.Config.Entrypoint, []string{"/usr/bin/keywarden"})
	eq("Cmd", c.Config.Cmd, []string{"serve", "--config", "/etc/keywarden/config.yaml"})
	eq("User", c.Config.User, "65532:65532")
	eq("Env", c.Config.Env, []string{"PATH=/usr/bin"})
	eq("WorkingDir", c.Config.WorkingDir, "/")
	eq("rootfs.type", c.RootFS.Type, "layers")
	for k, want := range map[string]string{
		"org.opencontainers.image.title":    "keywarden",
		"org.opencontainers.image.source":   "https://github.com/keywarden/keywarden",
		"org.opencontainers.image.version":  testVersion,
		"org.opencontainers.image.revision": "0123456789abcdef0123456789abcdef01234567",
		"org.opencontainers.image.created":  "2023-11-14T22:13:20Z",
		"org.opencontainers.image.licenses": "Apache-2.0",
	} {
		eq("label "+k, c.Config.Labels[k], want)
	}
	if c.Config.Labels["org.opencontainers.image.description"] == "" {
		t.Error("config has no description label")
	}
}

// checkLayer checks the layer against the config's diff_id and the expected file system,
// and returns the regular files' contents by name.
func checkLayer(t *testing.T, img layoutImage) map[string][]byte {
	t.Helper()
	gz := readBlob(t, img.dir, img.manifest.Layers[0])
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatalf("layer is not gzip: %v", err)
	}
	if !zr.ModTime.IsZero() || zr.Name != "" {
		t.Errorf("gzip header has mtime %v name %q: not reproducible", zr.ModTime, zr.Name)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("gunzip layer: %v", err)
	}
	if diffIDs := img.config.RootFS.DiffIDs; len(diffIDs) != 1 || diffIDs[0] != "sha256:"+sha256Hex(raw) {
		t.Fatalf("diff_ids %v, uncompressed layer is sha256:%s", diffIDs, sha256Hex(raw))
	}

	type want struct {
		typ      byte
		mode     int64
		uid, gid int
	}
	dir := func(mode int64, id int) want { return want{tar.TypeDir, mode, id, id} }
	file := func(mode int64) want { return want{tar.TypeReg, mode, 0, 0} }
	wantEntries := map[string]want{
		"etc/": dir(0o755, 0), "etc/group": file(0o644), "etc/passwd": file(0o644),
		"run/": dir(0o755, 0), "run/keywarden/": dir(0o755, 65532),
		"tmp/": dir(0o1777, 0),
		"usr/": dir(0o755, 0), "usr/bin/": dir(0o755, 0), "usr/bin/keywarden": file(0o755),
		"usr/share/": dir(0o755, 0), "usr/share/doc/": dir(0o755, 0),
		"usr/share/doc/keywarden/": dir(0o755, 0), "usr/share/doc/keywarden/sbom.spdx.json": file(0o644),
		"var/": dir(0o755, 0), "var/lib/": dir(0o755, 0), "var/lib/keywarden/": dir(0o755, 65532),
	}
	files := map[string][]byte{}
	var names []string
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("layer tar: %v", err)
		}
		names = append(names, h.Name)
		w, ok := wantEntries[h.Name]
		if !ok {
			t.Errorf("unexpected layer entry %q", h.Name)
			continue
		}
		delete(wantEntries, h.Name)
		if h.Typeflag != w.typ || h.Mode != w.mode || h.Uid != w.uid || h.Gid != w.gid {
			t.Errorf("%s: type %c mode %o owner %d:%d, want type %c mode %o owner %d:%d",
				h.Name, h.Typeflag, h.Mode, h.Uid, h.Gid, w.typ, w.mode, w.uid, w.gid)
		}
		if !h.ModTime.Equal(testEpoch) {
			t.Errorf("%s: mtime %v, want SOURCE_DATE_EPOCH %v", h.Name, h.ModTime, testEpoch)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatalf("read %s: %v", h.Name, err)
			}
			files[h.Name] = b
		}
	}
	for name := range wantEntries {
		t.Errorf("layer has no %s", name)
	}
	if !sort.StringsAreSorted(names) {
		t.Errorf("layer entries are not sorted: %v", names)
	}
	if p := string(files["etc/passwd"]); !strings.Contains(p, "nonroot:x:65532:65532:") || !strings.HasPrefix(p, "root:x:0:0:") {
		t.Errorf("/etc/passwd is %q", p)
	}
	if g := string(files["etc/group"]); !strings.Contains(g, "nonroot:x:65532:") || !strings.HasPrefix(g, "root:x:0:") {
		t.Errorf("/etc/group is %q", g)
	}
	return files
}

// checkBinary checks that the binary in the layer is static and runs.
func checkBinary(t *testing.T, bin []byte) {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		t.Fatalf("/usr/bin/keywarden is not ELF: %v", err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("/usr/bin/keywarden has PT_INTERP: dynamically linked")
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("/usr/bin/keywarden DT_NEEDED %v (err %v)", libs, err)
	}
	f.Close()

	path := filepath.Join(t.TempDir(), "keywarden")
	if err := os.WriteFile(path, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(path, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("keywarden version: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "keywarden "+testVersion {
		t.Errorf("keywarden version printed %q, want %q", got, "keywarden "+testVersion)
	}
}

func checkSBOM(t *testing.T, b []byte) {
	t.Helper()
	var doc struct {
		SPDXVersion  string `json:"spdxVersion"`
		SPDXID       string `json:"SPDXID"`
		CreationInfo struct {
			Created string `json:"created"`
		} `json:"creationInfo"`
		Packages []struct {
			Name         string `json:"name"`
			SPDXID       string `json:"SPDXID"`
			VersionInfo  string `json:"versionInfo"`
			Checksums    []struct{ Algorithm, ChecksumValue string }
			ExternalRefs []struct{ ReferenceType, ReferenceLocator string }
		} `json:"packages"`
		Relationships []struct {
			SPDXElementID, RelationshipType, RelatedSPDXElement string
		} `json:"relationships"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("SBOM is not JSON: %v", err)
	}
	if doc.SPDXVersion != "SPDX-2.3" || doc.SPDXID != "SPDXRef-DOCUMENT" {
		t.Errorf("SBOM spdxVersion %q SPDXID %q", doc.SPDXVersion, doc.SPDXID)
	}
	if doc.CreationInfo.Created != "2023-11-14T22:13:20Z" {
		t.Errorf("SBOM created %q, want SOURCE_DATE_EPOCH", doc.CreationInfo.Created)
	}
	found := map[string]bool{}
	ids := map[string]bool{}
	for _, p := range doc.Packages {
		if ids[p.SPDXID] {
			t.Errorf("duplicate SPDXID %s", p.SPDXID)
		}
		ids[p.SPDXID] = true
		switch p.Name {
		case "github.com/keywarden/keywarden":
			found[p.Name] = p.VersionInfo == testVersion
		case "stdlib":
			found[p.Name] = strings.HasPrefix(p.VersionInfo, "go1.")
		case "github.com/hashicorp/vault/api":
			ok := strings.HasPrefix(p.VersionInfo, "v1.") && len(p.Checksums) == 1 &&
				p.Checksums[0].Algorithm == "SHA256" && len(p.Checksums[0].ChecksumValue) == 64 &&
				len(p.ExternalRefs) == 1 && p.ExternalRefs[0].ReferenceLocator == "pkg:golang/github.com/hashicorp/vault/api@"+p.VersionInfo
			if !ok {
				t.Errorf("SBOM vault/api package %+v", p)
			}
			found[p.Name] = ok
		}
	}
	for _, name := range []string{"github.com/keywarden/keywarden", "stdlib", "github.com/hashicorp/vault/api"} {
		if !found[name] {
			t.Errorf("SBOM lacks package %s (or its version is wrong)", name)
		}
	}
	for _, r := range doc.Relationships {
		if !ids[r.RelatedSPDXElement] {
			t.Errorf("relationship to unknown element %s", r.RelatedSPDXElement)
		}
	}
}

// checkTarball reads the docker-loadable tarball and checks it carries the same config and
// layer as the layout.
func checkTarball(t *testing.T, path string, img layoutImage) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	entries := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("tarball: %v", err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("tarball %s: %v", h.Name, err)
		}
		entries[h.Name] = b
	}
	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(entries["manifest.json"], &manifest); err != nil {
		t.Fatalf("tarball manifest.json: %v", err)
	}
	if len(manifest) != 1 {
		t.Fatalf("tarball manifest.json has %d images, want 1", len(manifest))
	}
	m := manifest[0]
	if m.Config != img.configDigest {
		t.Errorf("tarball config %q, layout config %q", m.Config, img.configDigest)
	}
	if !bytes.Equal(entries[m.Config], img.configRaw) {
		t.Error("tarball config bytes differ from the layout's")
	}
	if want := defaultRepository + ":" + testVersion; len(m.RepoTags) != 1 || m.RepoTags[0] != want {
		t.Errorf("tarball RepoTags %v, want [%s]", m.RepoTags, want)
	}
	if len(m.Layers) != 1 {
		t.Fatalf("tarball has %d layers, want 1", len(m.Layers))
	}
	if got := "sha256:" + sha256Hex(entries[m.Layers[0]]); got != img.manifest.Layers[0].Digest {
		t.Errorf("tarball layer is %s, layout layer %s", got, img.manifest.Layers[0].Digest)
	}
}

func TestRun_badInput(t *testing.T) {
	tmp := t.TempDir()
	notELF := filepath.Join(tmp, "not-elf")
	if err := os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		epochEnv string
		real     bool // needs the real keywarden binary as -binary
		dynamic  bool // needs a dynamically linked system binary as -binary
		wantCode int
		wantErr  string
	}{
		{name: "missing binary", args: []string{"-binary", filepath.Join(tmp, "nope"), "-version", "v1"}, epochEnv: "1",
			wantCode: 1, wantErr: "read binary"},
		{name: "no binary flag", args: []string{"-version", "v1"}, epochEnv: "1",
			wantCode: 1, wantErr: "binary is required"},
		{name: "not ELF", args: []string{"-binary", notELF, "-version", "v1"}, epochEnv: "1",
			wantCode: 1, wantErr: "is not an ELF executable"},
		{name: "dynamically linked", args: []string{"-version", "v1"}, epochEnv: "1", dynamic: true,
			wantCode: 1, wantErr: "cannot run FROM scratch: it is dynamically linked"},
		{name: "epoch unset", args: []string{"-binary", notELF, "-version", "v1"},
			wantCode: 2, wantErr: "SOURCE_DATE_EPOCH is not set"},
		{name: "epoch not a number", args: []string{"-binary", notELF, "-version", "v1", "-source-date-epoch", "yesterday"},
			wantCode: 2, wantErr: `SOURCE_DATE_EPOCH "yesterday" is not a Unix time`},
		{name: "epoch negative", args: []string{"-binary", notELF, "-version", "v1"}, epochEnv: "-5",
			wantCode: 2, wantErr: `SOURCE_DATE_EPOCH "-5" is not a Unix time`},
		{name: "epoch in milliseconds", args: []string{"-binary", notELF, "-version", "v1"}, epochEnv: "1700000000000000",
			wantCode: 2, wantErr: "is not a Unix time in seconds"},
		{name: "no version", args: []string{"-binary", notELF}, epochEnv: "1",
			wantCode: 1, wantErr: "version is required"},
		{name: "version not a tag", args: []string{"-binary", notELF, "-version", "v1.0.0+build.1"}, epochEnv: "1",
			wantCode: 1, wantErr: "do not make an image tag"},
		{name: "stray argument", args: []string{"-binary", notELF, "-version", "v1", "extra"}, epochEnv: "1",
			wantCode: 2, wantErr: "unexpected arguments"},
		{name: "arch mismatch", args: []string{"-version", "v1", "-arch", "s390x"}, epochEnv: "1", real: true,
			wantCode: 1, wantErr: "GOARCH=" + runtime.GOARCH + ", not s390x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"-out", filepath.Join(t.TempDir(), "out")}, tt.args...)
			if tt.real {
				args = append(args, "-binary", keywardenBinary(t))
			}
			if tt.dynamic {
				args = append(args, "-binary", dynamicBinary(t))
			}
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), args, tt.epochEnv, &stdout, &stderr)
			if code != tt.wantCode {
				t.Errorf("exit code %d, want %d; stderr: %s", code, tt.wantCode, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.wantErr) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tt.wantErr)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout %q, want nothing on failure", stdout.String())
			}
		})
	}
}

// dynamicBinary returns a dynamically linked ELF program of the system.
func dynamicBinary(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/bin/sh", "/bin/ls", "/usr/bin/env"} {
		f, err := elf.Open(p)
		if err != nil {
			continue
		}
		dynamic := false
		for _, prog := range f.Progs {
			dynamic = dynamic || prog.Type == elf.PT_INTERP
		}
		f.Close()
		if dynamic {
			return p
		}
	}
	t.Skip("no dynamically linked system binary found")
	return ""
}

func TestParseSourceDateEpoch(t *testing.T) {
	got, err := parseSourceDateEpoch("1700000000")
	if err != nil || !got.Equal(testEpoch) || got.Location() != time.UTC {
		t.Errorf("parseSourceDateEpoch(1700000000) = %v, %v; want %v", got, err, testEpoch)
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
