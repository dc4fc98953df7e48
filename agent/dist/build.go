package dist

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Arches maps Debian architectures to the directory "make cross" builds
// them into (.build/bin/linux-<dir>).
var Arches = map[string]string{"amd64": "amd64", "arm64": "arm64", "armhf": "armv7"}

// imageArches are the GOARCH suffixes of binaries in Yocto/Buildroot files/.
var imageArches = map[string]string{"amd64": "amd64", "arm64": "arm64", "armhf": "arm"}

// BuildOptions says what "make package" builds.
type BuildOptions struct {
	Root    string    // repository root
	Out     string    // output directory (.build/dist)
	BinDir  string    // .build/bin: linux-<arch>/<binary>
	NFPM    string    // the nfpm binary
	Version string    // package version (Debian syntax)
	Date    time.Time // changelog date (the commit's, for reproducible packages)
	Arches  []string  // Debian architectures; empty: all
	Only    []string  // packages; empty: all
	Images  bool      // also the Yocto layer and Buildroot tree
	Log     func(format string, args ...any)
}

// Build makes the .deb packages (and the image trees) into o.Out and
// returns the files it wrote.
func Build(o BuildOptions) ([]string, error) {
	m, err := LoadManifest(o.Root)
	if err != nil {
		return nil, err
	}
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
	arches := o.Arches
	if len(arches) == 0 {
		arches = []string{"amd64", "arm64", "armhf"}
	}
	gen := filepath.Join(o.Out, "gen")
	if err := os.MkdirAll(gen, 0o755); err != nil {
		return nil, err
	}
	var written []string
	for _, p := range m.Packages {
		if len(o.Only) > 0 && !slices.Contains(o.Only, p.Name) {
			continue
		}
		cl, err := changelog(m, p.Name, o.Version, o.Date)
		if err != nil {
			return nil, err
		}
		clPath := filepath.Join(gen, p.Name+".changelog.gz")
		if err := os.WriteFile(clPath, cl, 0o644); err != nil {
			return nil, err
		}
		for _, arch := range arches {
			dir, ok := Arches[arch]
			if !ok {
				return nil, fmt.Errorf("unknown architecture %q", arch)
			}
			cfg, err := o.nfpmConfig(m, p, arch, filepath.Join(o.BinDir, "linux-"+dir), clPath)
			if err != nil {
				return nil, err
			}
			cfgPath := filepath.Join(gen, fmt.Sprintf("%s_%s.nfpm.json", p.Name, arch))
			if err := os.WriteFile(cfgPath, cfg, 0o644); err != nil {
				return nil, err
			}
			target := filepath.Join(o.Out, fmt.Sprintf("%s_%s_%s.deb", p.Name, o.Version, arch))
			cmd := exec.Command(o.NFPM, "package", "--config", cfgPath, "--packager", "deb", "--target", target)
			cmd.Env = append(os.Environ(), fmt.Sprintf("SOURCE_DATE_EPOCH=%d", o.Date.Unix()))
			if out, err := cmd.CombinedOutput(); err != nil {
				return nil, fmt.Errorf("nfpm %s %s: %v\n%s", p.Name, arch, err, out)
			}
			o.Log("package %s", filepath.Base(target))
			written = append(written, target)
		}
	}
	if o.Images {
		for _, t := range []struct {
			name, dir, filesDir string
		}{
			{"meta-devid", "agent/dist/yocto/meta-devid", "recipes-devid/devid-agent/files"},
			{"devid-buildroot", "agent/dist/buildroot", "package/devid-agent/files"},
		} {
			target := filepath.Join(o.Out, fmt.Sprintf("%s-%s.tar.gz", t.name, o.Version))
			if err := o.imageTree(m, t.name, t.dir, t.filesDir, target); err != nil {
				return nil, err
			}
			o.Log("image tree %s", filepath.Base(target))
			written = append(written, target)
		}
	}
	return written, nil
}

// source resolves a manifest src for one architecture.
func (o BuildOptions) source(f File, binDir, changelogPath string) (string, error) {
	kind, name, ok := strings.Cut(f.Src, ":")
	var p string
	switch {
	case !ok:
		p = filepath.Join(o.Root, f.Src)
	case kind == "bin":
		p = filepath.Join(binDir, name)
	case kind == "build" && name == "changelog.gz":
		p = changelogPath
	default:
		return "", fmt.Errorf("file %s: unknown src %q", f.Dst, f.Src)
	}
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("file %s: %w", f.Dst, err)
	}
	return p, nil
}

// nfpmConfig is the nfpm configuration (JSON is YAML) of one .deb.
func (o BuildOptions) nfpmConfig(m *Manifest, p Package, arch, binDir, changelogPath string) ([]byte, error) {
	type fileInfo struct {
		Mode  uint32 `json:"mode"`
		Owner string `json:"owner"`
		Group string `json:"group"`
	}
	type content struct {
		Src      string   `json:"src"`
		Dst      string   `json:"dst"`
		Type     string   `json:"type,omitempty"`
		FileInfo fileInfo `json:"file_info"`
	}
	var contents []content
	for _, f := range m.FilesOf(p.Name) {
		src, err := o.source(f, binDir, changelogPath)
		if err != nil {
			return nil, err
		}
		if f.Kind == "man" && !strings.HasSuffix(src, ".gz") {
			gz, err := gzipFile(src, filepath.Join(o.Out, "gen", path.Base(f.Dst)))
			if err != nil {
				return nil, err
			}
			src = gz
		}
		c := content{Src: src, Dst: f.Dst, FileInfo: fileInfo{Mode: uint32(f.Perm()), Owner: "root", Group: "root"}}
		if f.Kind == "config" {
			c.Type = "config|noreplace"
		}
		contents = append(contents, c)
	}
	ov := filepath.Join(o.Root, "agent/dist/deb", p.Name+".lintian-overrides")
	contents = append(contents, content{Src: ov, Dst: "/usr/share/lintian/overrides/" + p.Name, FileInfo: fileInfo{Mode: 0o644, Owner: "root", Group: "root"}})
	cfg := map[string]any{
		"name":        p.Name,
		"arch":        arch,
		"platform":    "linux",
		"version":     o.Version,
		"section":     p.Section,
		"priority":    "optional",
		"maintainer":  m.Maintainer,
		"homepage":    m.Homepage,
		"license":     m.License,
		"description": p.Summary + "\n" + p.Description,
		"contents":    contents,
	}
	if len(p.Depends) > 0 {
		cfg["depends"] = p.Depends
	}
	if p.Unit != "" {
		scripts := map[string]string{}
		for k, name := range map[string]string{"postinstall": "postinst", "preremove": "prerm", "postremove": "postrm"} {
			scripts[k] = filepath.Join(o.Root, "agent/dist/deb", p.Name+"."+name)
		}
		cfg["scripts"] = scripts
	}
	return json.MarshalIndent(cfg, "", "  ")
}

// changelog is the package's Debian changelog (a native package: one entry
// for the version being built).
func changelog(m *Manifest, pkg, version string, date time.Time) ([]byte, error) {
	text := fmt.Sprintf("%s (%s) unstable; urgency=medium\n\n  * Release %s; see the project history for changes.\n\n -- %s  %s\n",
		pkg, version, version, m.Maintainer, date.UTC().Format("Mon, 02 Jan 2006 15:04:05 -0700"))
	var b bytes.Buffer
	zw, err := gzip.NewWriterLevel(&b, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	zw.ModTime = time.Time{} // gzip -n: no name, no time
	if _, err := zw.Write([]byte(text)); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func gzipFile(src, dst string) (string, error) {
	b, err := os.ReadFile(src)
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	zw.Write(b)
	zw.Close()
	return dst, os.WriteFile(dst, buf.Bytes(), 0o644)
}

// imageTree writes a tar.gz of a Yocto layer or Buildroot tree with its
// files/ directory filled in: the binaries of every architecture and the
// manifest's other files.
func (o BuildOptions) imageTree(m *Manifest, name, dir, filesDir, target string) error {
	f, err := os.Create(target)
	if err != nil {
		return err
	}
	defer f.Close()
	zw, _ := gzip.NewWriterLevel(f, gzip.BestCompression)
	tw := tar.NewWriter(zw)
	add := func(rel string, mode int64, b []byte) error {
		h := &tar.Header{Name: name + "/" + rel, Mode: mode, Size: int64(len(b)), ModTime: o.Date, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	err = filepath.WalkDir(filepath.Join(o.Root, dir), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(filepath.Join(o.Root, dir), p)
		return add(filepath.ToSlash(rel), 0o644, b)
	})
	if err != nil {
		return err
	}
	for _, fl := range m.imageFiles("devid-agent") {
		if fl.Kind == "binary" {
			for _, deb := range []string{"amd64", "arm64", "armhf"} {
				b, err := os.ReadFile(filepath.Join(o.BinDir, "linux-"+Arches[deb], localName(fl)))
				if err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
				if err := add(filesDir+"/"+localName(fl)+"-"+imageArches[deb], 0o755, b); err != nil {
					return err
				}
			}
			continue
		}
		src, err := o.source(fl, "", "")
		if err != nil {
			return err
		}
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if err := add(filesDir+"/"+localName(fl), 0o644, b); err != nil {
			return err
		}
	}
	lic, err := os.ReadFile(filepath.Join(o.Root, "LICENSE"))
	if err != nil {
		return err
	}
	if err := add(filesDir+"/LICENSE", 0o644, lic); err != nil {
		return err
	}
	if err := add(filesDir+"/VERSION", 0o644, []byte(o.Version+"\n")); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return f.Close()
}

// WriteSums writes SHA256SUMS (sha256sum's format) for files, named
// relative to dir.
func WriteSums(dir string, files []string) error {
	var b bytes.Buffer
	slices.Sort(files)
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fmt.Fprintf(&b, "%s  %s\n", hex.EncodeToString(h.Sum(nil)), filepath.ToSlash(rel))
	}
	return os.WriteFile(filepath.Join(dir, "SHA256SUMS"), b.Bytes(), 0o644)
}
