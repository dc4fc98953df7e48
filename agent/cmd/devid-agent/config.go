package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/pelletier/go-toml/v2"

	"devid/agent/config"
	"devid/hal/atomicfile"
)

func configCheckFlags(fs *flag.FlagSet) func(context.Context, []string) error {
	path := fs.String("config", config.DefaultPath, "config `FILE` (TOML)")
	return func(context.Context, []string) error { return configCheck(os.Stdout, os.Stderr, *path) }
}

// configCheck implements `devid-agent config check [--config FILE]`:
// every problem at once (the file's own, then what it refers to on this
// machine), warnings on stderr, the effective config on stdout when
// valid. Exit 0 valid, 1 problems (2 usage, from dispatch). It never
// changes a file.
func configCheck(stdout, stderr io.Writer, path string) error {
	c, err := config.Inspect(path)
	if c == nil {
		return err // unreadable or not TOML: nothing more to look at
	}
	var probs []string
	if ve := (*config.ValidationError)(nil); errors.As(err, &ve) {
		probs = ve.Problems
	} else if err != nil {
		return err
	}
	// A field already wrong in the file is not reported again for what
	// it (does not) refer to.
	wrong := map[string]bool{}
	for _, p := range probs {
		wrong[config.Field(p)] = true
	}
	sys := c.CheckSystem()
	for _, p := range sys.Problems {
		if !wrong[config.Field(p)] {
			probs = append(probs, p)
		}
	}
	for _, w := range append(sys.Warnings, incomplete(c)...) {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	if len(probs) > 0 {
		return fmt.Errorf("%s: %w", path, &config.ValidationError{Problems: probs})
	}
	b, err := c.Redacted().TOML()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "# effective config (%s is valid; passwords masked)\n", path)
	_, err = stdout.Write(b)
	return err
}

// incomplete names what a valid config still lacks for a new device to
// go from the factory to the hub: valid is not the same as ready. (An
// empty dps.id_scope and a missing factory.root are problems, reported
// by CheckSystem.)
func incomplete(c *config.Config) []string {
	var out []string
	if c.Factory.Port == "" && !c.Factory.USBGadget && c.Hardware.Button == "" {
		out = append(out, "factory.port is empty, factory.usb_gadget is off and there is no factory button (hardware.button): the jig cannot program a device that has no certificate yet")
	}
	return out
}

// lkgConfigFile is the last-known-good copy of the config that `run`
// keeps in the state dir after each successful start.
const lkgConfigFile = "config.last-good.toml"

// loadConfigOrLKG loads path. If the file is invalid (or gone) and a
// previous successful `run` left a last-known-good copy, it returns that
// copy and a note saying what was wrong and from when: a bad config
// push must not strand a field device. With no copy, the error stands
// (a first boot with a bad config exits non-zero with the message).
func loadConfigOrLKG(path string) (*config.Config, string, error) {
	cfg, err := config.Load(path)
	if err == nil {
		return cfg, "", nil
	}
	for _, dir := range lkgDirs(path) {
		file := filepath.Join(dir, lkgConfigFile)
		b, rerr := os.ReadFile(file)
		if rerr != nil {
			continue
		}
		lkg, perr := config.Parse(b)
		if perr != nil || lkg.StateDir != dir {
			continue // not a copy this agent wrote for this state dir
		}
		when := "an unknown time"
		if st, serr := os.Stat(file); serr == nil {
			when = st.ModTime().UTC().Format(time.RFC3339)
		}
		return lkg, fmt.Sprintf("degraded (using last-known-good from %s): %s: %v", when, path, err), nil
	}
	return nil, "", err
}

// lkgDirs are the state dirs that may hold the copy: the one the invalid
// file names (when it still parses as TOML), then the default.
func lkgDirs(path string) []string {
	var dirs []string
	if b, err := os.ReadFile(path); err == nil {
		var v struct {
			StateDir string `toml:"state_dir"`
		}
		if toml.Unmarshal(b, &v) == nil && filepath.IsAbs(v.StateDir) {
			dirs = append(dirs, filepath.Clean(v.StateDir))
		}
	}
	if d := config.Default().StateDir; !slices.Contains(dirs, d) {
		dirs = append(dirs, d)
	}
	return dirs
}

// saveLKG keeps the effective config (as loaded, before any run-time
// resolution) as the last-known-good copy: atomic, 0600, and not
// rewritten when unchanged (flash wear).
func saveLKG(stateDir string, effective []byte) error {
	file := filepath.Join(stateDir, lkgConfigFile)
	if old, err := os.ReadFile(file); err == nil && bytes.Equal(old, effective) {
		return nil
	}
	return atomicfile.WriteFile(file, effective, 0o600)
}
