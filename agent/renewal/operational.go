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
// running it (`devid-agent check` probes the hub with it). It goes by the
// chain file's presence, whatever renewal.path says. It returns nil and
// no error when no operational chain is installed; an error means one is
// but it does not load (its key missing or unreadable, the chain damaged
// or not for that key). The caller closes the credential.
func LoadOperational(cfg *config.Config) (*credential.Credential, error) {
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
