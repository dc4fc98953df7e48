// Package dist turns agent/dist/manifest.toml, the one list of what devid
// installs where, into every packaging format: the config template, the
// sysusers.d and tmpfiles.d files, the Debian maintainer scripts and
// copyright file, the nfpm configuration of each .deb, the meta-devid Yocto
// layer and the Buildroot external tree, and the third-party notices
// (docs/packaging.md).
//
// Generate returns the files kept in the repository; the test in this
// package fails when one of them differs from what Generate makes, so none
// can drift from the manifest or from the config package.
package dist

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// ManifestPath is the manifest, relative to the repository root.
const ManifestPath = "agent/dist/manifest.toml"

// VersionPath holds the release version (semver), relative to the root.
const VersionPath = "agent/dist/VERSION"

// Manifest is agent/dist/manifest.toml.
type Manifest struct {
	Maintainer string    `toml:"maintainer"`
	Homepage   string    `toml:"homepage"`
	License    string    `toml:"license"`
	Copyright  string    `toml:"copyright"`
	User       User      `toml:"user"`
	Packages   []Package `toml:"package"`
	Dirs       []Dir     `toml:"dir"`
	Files      []File    `toml:"file"`
}

// User is the system user the agent runs as.
type User struct {
	Name   string   `toml:"name"`
	Gecos  string   `toml:"gecos"`
	Home   string   `toml:"home"`
	Shell  string   `toml:"shell"`
	Groups []string `toml:"groups"`
}

// Package is one binary package.
type Package struct {
	Name            string     `toml:"name"`
	Section         string     `toml:"section"`
	Summary         string     `toml:"summary"`
	Description     string     `toml:"description"`
	Depends         []string   `toml:"depends"`
	Unit            string     `toml:"unit"`
	Udev            bool       `toml:"udev"`
	LintianOverride []Override `toml:"lintian_override"`
}

// Override is one lintian override and why it is right.
type Override struct {
	Tag    string `toml:"tag"`
	Reason string `toml:"reason"`
}

// Dir is a directory the package's tmpfiles.d entry creates.
type Dir struct {
	Package string `toml:"package"`
	Path    string `toml:"path"`
	Mode    string `toml:"mode"`
	Owner   string `toml:"owner"`
	Group   string `toml:"group"`
	Why     string `toml:"why"`
}

// File is one installed file.
type File struct {
	Package string `toml:"package"`
	Src     string `toml:"src"`
	Dst     string `toml:"dst"`
	Mode    string `toml:"mode"`
	Owner   string `toml:"owner"`
	Group   string `toml:"group"`
	Kind    string `toml:"kind"`
	// Format limits the entry to one package format ("deb"); empty: all.
	Format string `toml:"format"`
}

// Kinds of installed file.
var kinds = []string{"binary", "unit", "sysusers", "tmpfiles", "udev", "config", "man", "doc", "copyright", "changelog"}

// ForImages reports whether Yocto and Buildroot install the file too: they
// have their own copyright and changelog conventions.
func (f File) ForImages() bool { return f.Format == "" }

// Perm is the file mode as a number.
func (f File) Perm() os.FileMode { m, _ := strconv.ParseUint(f.Mode, 8, 32); return os.FileMode(m) }

// LoadManifest reads and checks the manifest under root.
func LoadManifest(root string) (*Manifest, error) {
	b, err := os.ReadFile(filepath.Join(root, ManifestPath))
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := toml.NewDecoder(bytes.NewReader(b)).DisallowUnknownFields().Decode(&m); err != nil {
		return nil, fmt.Errorf("%s: %w", ManifestPath, err)
	}
	for i := range m.Files {
		f := &m.Files[i]
		if f.Owner == "" {
			f.Owner = "root"
		}
		if f.Group == "" {
			f.Group = "root"
		}
	}
	if err := m.check(); err != nil {
		return nil, fmt.Errorf("%s: %w", ManifestPath, err)
	}
	return &m, nil
}

var modeRE = regexp.MustCompile(`^0[0-7]{3}$`)

func (m *Manifest) check() error {
	var p []string
	pkgs := map[string]bool{}
	for _, pk := range m.Packages {
		pkgs[pk.Name] = true
		for _, o := range pk.LintianOverride {
			if strings.TrimSpace(o.Reason) == "" {
				p = append(p, fmt.Sprintf("package %s: lintian override %q has no reason", pk.Name, o.Tag))
			}
		}
	}
	seen := map[string]bool{}
	for _, f := range m.Files {
		id := f.Package + ":" + f.Dst
		switch {
		case !pkgs[f.Package]:
			p = append(p, fmt.Sprintf("file %s: unknown package %q", f.Dst, f.Package))
		case !strings.HasPrefix(f.Dst, "/"):
			p = append(p, fmt.Sprintf("file %s: dst is not absolute", f.Dst))
		case !modeRE.MatchString(f.Mode):
			p = append(p, fmt.Sprintf("file %s: mode %q is not like 0644", f.Dst, f.Mode))
		case !slices.Contains(kinds, f.Kind):
			p = append(p, fmt.Sprintf("file %s: kind %q is not one of %v", f.Dst, f.Kind, kinds))
		case seen[id]:
			p = append(p, fmt.Sprintf("file %s: listed twice for %s", f.Dst, f.Package))
		}
		seen[id] = true
	}
	for _, d := range m.Dirs {
		if !pkgs[d.Package] || !modeRE.MatchString(d.Mode) || !strings.HasPrefix(d.Path, "/") {
			p = append(p, fmt.Sprintf("dir %s: needs a known package, an absolute path and a mode like 0750", d.Path))
		}
	}
	if len(p) > 0 {
		return fmt.Errorf("%s", strings.Join(p, "; "))
	}
	return nil
}

// Package returns the named package.
func (m *Manifest) Package(name string) (Package, bool) {
	for _, p := range m.Packages {
		if p.Name == name {
			return p, true
		}
	}
	return Package{}, false
}

// FilesOf returns the files of one package, in manifest order.
func (m *Manifest) FilesOf(pkg string) []File {
	var out []File
	for _, f := range m.Files {
		if f.Package == pkg {
			out = append(out, f)
		}
	}
	return out
}

// FileOfKind returns the package's first file of a kind.
func (m *Manifest) FileOfKind(pkg, kind string) (File, bool) {
	for _, f := range m.FilesOf(pkg) {
		if f.Kind == kind {
			return f, true
		}
	}
	return File{}, false
}

// DirsOf returns the directories of one package.
func (m *Manifest) DirsOf(pkg string) []Dir {
	var out []Dir
	for _, d := range m.Dirs {
		if d.Package == pkg {
			out = append(out, d)
		}
	}
	return out
}

// ReadVersion returns the release version in agent/dist/VERSION.
func ReadVersion(root string) (string, error) {
	b, err := os.ReadFile(filepath.Join(root, VersionPath))
	if err != nil {
		return "", err
	}
	v := strings.TrimSpace(string(b))
	if !semverRE.MatchString(v) {
		return "", fmt.Errorf("%s: %q is not a semantic version like 1.2.3", VersionPath, v)
	}
	return v, nil
}

var semverRE = regexp.MustCompile(`^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?$`)
