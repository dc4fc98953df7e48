package renewal

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"devid/agent/config"
	"devid/enroll/credential"
	"devid/enroll/rotate"
)

// LoadOperational loads the operational credential installed in
// cfg.StateDir (OperationalChainFile, with its key where New puts it:
// operationalKeySpec), for the tools that act as the agent without
// running it (`devid-agent check` probes the hub with it). Like the
// agent (Renewal.Operational), it loads one only while the path in force
// gives the hub an operational credential (dps, hub, or auto before or
// after deciding dps). It returns nil and no error when no operational
// chain is installed or the path does not use one; an error means one is
// but it does not load (its key missing or unreadable, the chain damaged
// or not for that key). The caller closes the credential.
func LoadOperational(cfg *config.Config) (*credential.Credential, error) {
	if !UsesOperational(cfg) {
		return nil, nil
	}
	chain := filepath.Join(cfg.StateDir, OperationalChainFile)
	if _, err := os.Stat(chain); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	spec, err := operationalKeySpec(cfg.Key.Backend, cfg.StateDir, cfg.Renewal.KeyCurve)
	if err != nil {
		return nil, err
	}
	c, err := rotate.LoadCredential(rotate.Slot{KeySpec: spec, ChainPath: chain}, cfg.StateDir)
	if err != nil {
		return nil, err
	}
	return &c, nil
}

// UsesOperational says whether the path in force for cfg gives the hub
// the operational credential once one is installed: paths dps and hub,
// and auto unless it decided est or none. status and check read it, as
// the agent does (Renewal.IssuesAtRegistration).
func UsesOperational(cfg *config.Config) bool {
	p, _ := effectivePath(cfg)
	return p == "dps" || p == "hub" || p == ""
}
