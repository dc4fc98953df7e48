// Command distgen writes devid's packaging files from agent/dist/manifest.toml
// and builds the packages (docs/packaging.md).
//
//	distgen generate                 rewrite the generated files in the tree
//	distgen notices                  rewrite agent/dist/third-party-notices.txt
//	distgen package -nfpm BIN ...    build .deb packages and image trees into -out
//
// It runs from the repository root (the Makefile's targets dist-gen,
// notices and package).
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"devid/agent/dist"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: distgen generate|notices|package [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "generate":
		var files map[string][]byte
		if files, err = dist.Generate("."); err == nil {
			err = dist.WriteGenerated(".", files)
		}
	case "notices":
		var b []byte
		if b, err = dist.Notices("."); err == nil {
			err = os.WriteFile(dist.NoticesPath, b, 0o644)
		}
	case "package":
		err = pkg(os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "distgen: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "distgen %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func pkg(args []string) error {
	fs := flag.NewFlagSet("distgen package", flag.ExitOnError)
	o := dist.BuildOptions{Root: "."}
	fs.StringVar(&o.Out, "out", ".build/dist", "output directory")
	fs.StringVar(&o.BinDir, "bin", ".build/bin", "directory with linux-<arch>/ binaries (make cross)")
	fs.StringVar(&o.NFPM, "nfpm", "", "nfpm binary")
	fs.StringVar(&o.Version, "version", "", "package version (default: agent/dist/VERSION)")
	epoch := fs.String("date", "", "changelog and file date, Unix seconds (default: now)")
	arches := fs.String("arch", "", "comma-separated Debian architectures (default: amd64,arm64,armhf)")
	only := fs.String("only", "", "comma-separated packages (default: all)")
	fs.BoolVar(&o.Images, "images", true, "also the Yocto layer and the Buildroot tree")
	sums := fs.Bool("sums", true, "write SHA256SUMS over everything in -out")
	fs.Parse(args)
	if o.NFPM == "" {
		return fmt.Errorf("-nfpm is required")
	}
	if o.Version == "" {
		v, err := dist.ReadVersion(".")
		if err != nil {
			return err
		}
		o.Version = v
	}
	o.Date = time.Now()
	if *epoch != "" {
		n, err := strconv.ParseInt(*epoch, 10, 64)
		if err != nil {
			return fmt.Errorf("-date %q: %w", *epoch, err)
		}
		o.Date = time.Unix(n, 0)
	}
	if *arches != "" {
		o.Arches = strings.Split(*arches, ",")
	}
	if *only != "" {
		o.Only = strings.Split(*only, ",")
	}
	o.Log = func(format string, a ...any) { fmt.Printf("package: "+format+"\n", a...) }
	if _, err := dist.Build(o); err != nil {
		return err
	}
	if !*sums {
		return nil
	}
	all, err := filepath.Glob(filepath.Join(o.Out, "*.*"))
	if err != nil {
		return err
	}
	var files []string
	for _, f := range all {
		if filepath.Base(f) != "SHA256SUMS" {
			files = append(files, f)
		}
	}
	return dist.WriteSums(o.Out, files)
}
