package main

import (
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
)

// binaryInfo is what the image and the SBOM need to know about the binary.
type binaryInfo struct {
	build     *debug.BuildInfo
	goVersion string // go1.26.8
	goarch    string
	variant   string // platform variant: v8 for arm64, v6/v7 for arm
}

// inspectBinary refuses anything that would not run FROM scratch: a non-ELF file, a
// dynamically linked one (it needs a loader and libc the image does not have), a binary
// without Go build info, or one not built for linux with cgo off.
func inspectBinary(path string, bin []byte) (binaryInfo, error) {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return binaryInfo{}, fmt.Errorf("binary %s is not an ELF executable: %w", path, err)
	}
	defer f.Close()
	if err := checkStatic(f); err != nil {
		return binaryInfo{}, fmt.Errorf("binary %s cannot run FROM scratch: %w (build it with CGO_ENABLED=0)", path, err)
	}

	bi, err := buildinfo.Read(bytes.NewReader(bin))
	if err != nil {
		return binaryInfo{}, fmt.Errorf("binary %s has no Go build info: %w", path, err)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if bi.Path != "github.com/keywarden/keywarden/cmd/keywarden" {
		return binaryInfo{}, fmt.Errorf("binary %s is %q, not github.com/keywarden/keywarden/cmd/keywarden", path, bi.Path)
	}
	if goos := settings["GOOS"]; goos != "linux" {
		return binaryInfo{}, fmt.Errorf("binary %s is built for GOOS=%s, not linux", path, goos)
	}
	if settings["CGO_ENABLED"] != "0" {
		return binaryInfo{}, fmt.Errorf("binary %s is built with CGO_ENABLED=%s, not 0", path, settings["CGO_ENABLED"])
	}
	info := binaryInfo{build: bi, goVersion: bi.GoVersion, goarch: settings["GOARCH"]}
	if info.goarch == "" {
		return binaryInfo{}, fmt.Errorf("binary %s does not record its GOARCH", path)
	}
	switch info.goarch {
	case "arm64":
		info.variant = "v8"
	case "arm":
		// GOARM is "7" or "7,softfloat"; the OCI variant is v7.
		if v, _, _ := strings.Cut(settings["GOARM"], ","); v != "" {
			info.variant = "v" + v
		}
	}
	return info, nil
}

// checkStatic fails for an ELF file that asks for a program interpreter (PT_INTERP) or
// names shared libraries (DT_NEEDED).
func checkStatic(f *elf.File) error {
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("ELF type %s is not an executable", f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			interp := make([]byte, p.Filesz)
			if _, err := p.ReadAt(interp, 0); err != nil {
				return errors.New("it is dynamically linked (PT_INTERP)")
			}
			return fmt.Errorf("it is dynamically linked (interpreter %s)", strings.TrimRight(string(interp), "\x00"))
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return fmt.Errorf("read dynamic section: %w", err)
	}
	if len(libs) > 0 {
		return fmt.Errorf("it needs shared libraries %s", strings.Join(libs, ", "))
	}
	return nil
}
