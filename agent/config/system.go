package config

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// AgentUser is the account the packaged agent runs as.
const AgentUser = "devid"

// Report is what config check found beyond the file itself: Problems
// stop the agent from working as configured, Warnings are choices an
// operator should make knowingly.
type Report struct {
	Problems []string
	Warnings []string
}

// CheckSystem looks at what the config refers to on this machine: the
// files exist, are readable by the agent's user and hold PEM
// certificates; dps.id_scope is set; the local API group exists; the
// state dir is a directory the agent owns (or will create). It only
// reads: config check never changes a file.
func (c *Config) CheckSystem() Report {
	var r Report
	bad := func(field, format string, args ...any) {
		r.Problems = append(r.Problems, field+": "+fmt.Sprintf(format, args...))
	}
	agent := agentAccount()
	if c.DPS.IDScope == "" {
		bad("dps.id_scope", "must be set: the agent cannot register with DPS without it (the Azure portal shows it on the DPS overview, like 0ne00000000)")
	}
	if c.Factory.Root != "" {
		if err := checkPEMFile(c.Factory.Root, agent); err != nil {
			bad("factory.root", "%v", err)
		}
	}
	if c.DPS.TrustBundle != "" {
		if err := checkPEMFile(c.DPS.TrustBundle, agent); err != nil {
			bad("dps.trust_bundle", "%v", err)
		}
	}
	if c.LocalAPI.Socket != "" && c.LocalAPI.Group != "" {
		if _, err := user.LookupGroup(c.LocalAPI.Group); err != nil {
			bad("local_api.group", "group %q does not exist on this system (create it, or name an existing group)", c.LocalAPI.Group)
		}
	}
	if err := checkStateDir(c.StateDir, agent); err != nil {
		bad("state_dir", "%v", err)
	}
	if c.Renewal.Path == "none" {
		r.Warnings = append(r.Warnings, `renewal.path: "none": the device certificate is never renewed and the device goes offline when it expires; set "dps", "hub" or "est"`)
	}
	return r
}

// account is the user the agent runs as, to judge permissions by.
type account struct {
	name     string
	uid, gid int
	groups   []int
}

// agentAccount is the devid user when it exists (the packaged agent runs
// as it), else the user running the check.
func agentAccount() account {
	u, err := user.Lookup(AgentUser)
	if err != nil {
		u, err = user.Current()
	}
	if err != nil {
		return account{name: strconv.Itoa(os.Geteuid()), uid: os.Geteuid(), gid: os.Getegid()}
	}
	a := account{name: u.Username}
	a.uid, _ = strconv.Atoi(u.Uid)
	a.gid, _ = strconv.Atoi(u.Gid)
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if n, err := strconv.Atoi(id); err == nil {
				a.groups = append(a.groups, n)
			}
		}
	}
	return a
}

// canRead says whether a may read a file with this owner and mode, by
// the permission bits (root reads everything).
func (a account) canRead(st fs.FileInfo) bool {
	if a.uid == 0 {
		return true
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return true
	}
	m := st.Mode().Perm()
	switch {
	case int(sys.Uid) == a.uid:
		return m&0o400 != 0
	case int(sys.Gid) == a.gid || containsInt(a.groups, int(sys.Gid)):
		return m&0o040 != 0
	}
	return m&0o004 != 0
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// checkPEMFile: the file exists, the agent's user may read it, and it
// holds at least one PEM certificate that parses.
func checkPEMFile(path string, a account) error {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s does not exist", path)
	}
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	if !a.canRead(st) {
		return fmt.Errorf("%s is not readable by user %s (mode %04o, owner %s)", path, a.name, st.Mode().Perm(), ownerOf(st))
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("cannot read %s: %v", path, errors.Unwrap(err))
	}
	n := 0
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return fmt.Errorf("%s: certificate %d does not parse: %v", path, n+1, err)
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("%s holds no PEM certificate", path)
	}
	return nil
}

// checkStateDir: an existing state dir is a directory owned by the
// agent's user; a missing one is created by the agent, which needs its
// nearest existing parent to be a directory.
func checkStateDir(dir string, a account) error {
	if !filepath.IsAbs(dir) {
		return nil // Validate reports it
	}
	st, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		parent := filepath.Dir(dir)
		for {
			pst, perr := os.Stat(parent)
			if perr == nil {
				if !pst.IsDir() {
					return fmt.Errorf("%s cannot be created: %s is not a directory", dir, parent)
				}
				return nil
			}
			if parent == "/" || !errors.Is(perr, fs.ErrNotExist) && !errors.Is(perr, syscall.ENOTDIR) {
				return nil
			}
			parent = filepath.Dir(parent)
		}
	}
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != a.uid {
		return fmt.Errorf("%s belongs to %s, not to the agent's user %s; the agent makes its state dir 0700 and must own it (chown -R %s %s, or use a directory of its own)", dir, ownerOf(st), a.name, a.name, dir)
	}
	return nil
}

func ownerOf(st fs.FileInfo) string {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return "?"
	}
	id := strconv.Itoa(int(sys.Uid))
	if u, err := user.LookupId(id); err == nil {
		return u.Username
	}
	return id
}
