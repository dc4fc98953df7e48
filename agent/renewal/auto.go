package renewal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"devid/agent/config"
	"devid/agent/statedir"
	"devid/dps"
	"devid/enroll/credential"
	"devid/enroll/rotate"
	"devid/hal/atomicfile"
)

// renewal.path "auto" (docs/rotation.md): the agent finds out at its
// first DPS registration whether the enrollment issues certificates,
// records the answer in ChoiceFile and renews through DPS if it does,
// else through EST when renewal.est_url is set, else not at all. The
// answer is kept: later registrations do not ask again (delete the file,
// or set renewal.path, to decide anew).

// ChoiceFile records what path "auto" found out, in the state directory.
const ChoiceFile = "renewal-path.json"

// choiceSchema is the version of ChoiceFile this agent writes.
const choiceSchema = 1

// Choice is the content of ChoiceFile.
type Choice struct {
	Schema int `json:"schema"`
	// DPSIssues: DPS issued a certificate for the CSR of a registration.
	DPSIssues bool `json:"dps_issues"`
	// Evidence says what DPS answered (or why DPS was not asked).
	Evidence  string    `json:"evidence"`
	DecidedAt time.Time `json:"decided_at"`
}

// path is the configured path the choice means, with est_url from the
// config as it is now (setting est_url later takes effect at restart).
func (c *Choice) path(estURL string) string {
	switch {
	case c.DPSIssues:
		return "dps"
	case estURL != "":
		return "est"
	}
	return "none"
}

// why is the status line saying why path was chosen.
func (c *Choice) why(estURL string) string {
	at := c.DecidedAt.UTC().Format(time.RFC3339)
	switch c.path(estURL) {
	case "dps":
		return fmt.Sprintf("auto: %s (%s)", c.Evidence, at)
	case "est":
		return fmt.Sprintf("auto: %s (%s); renewal.est_url is set", c.Evidence, at)
	}
	return fmt.Sprintf("auto: %s (%s), and renewal.est_url is not set: nothing renews the certificate", c.Evidence, at)
}

// LoadChoice reads ChoiceFile; nil, nil when there is none. It never
// changes the file (status and check call it).
func LoadChoice(stateDir string) (*Choice, error) {
	path := filepath.Join(stateDir, ChoiceFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var c Choice
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%s is not JSON: %v", path, err)
	}
	if c.Schema < 1 || c.Schema > choiceSchema {
		return nil, fmt.Errorf("%s: schema %d, this agent reads %d", path, c.Schema, choiceSchema)
	}
	return &c, nil
}

func saveChoice(stateDir string, c *Choice) error {
	c.Schema = choiceSchema
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(stateDir, ChoiceFile), append(b, '\n'), 0o600)
}

// effectivePath is the path in force for cfg: renewal.path, or for
// "auto" the recorded choice ("" while undecided), with why it holds.
func effectivePath(cfg *config.Config) (path, why string) {
	if cfg.Renewal.Path != "auto" {
		return cfg.Renewal.Path, ""
	}
	c, err := LoadChoice(cfg.StateDir)
	switch {
	case err != nil:
		return "", "auto: the recorded choice is unreadable (" + err.Error() + "); the agent decides again at its next DPS registration"
	case c == nil:
		return "", "auto: decided at the first DPS registration, which has not happened yet"
	}
	return c.path(cfg.Renewal.ESTURL), c.why(cfg.Renewal.ESTURL)
}

// undecided says whether path "auto" has yet to decide.
func (r *Renewal) undecided() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.configured == "auto" && r.path == ""
}

// decide records the choice and sets the renewal up for the path it
// means. The renewal loop (Run) starts then.
func (r *Renewal) decide(c *Choice) {
	c.DecidedAt = r.clock.Now().UTC()
	if err := saveChoice(r.stateDir, c); err != nil {
		// The choice holds for this run; the next start asks DPS again.
		r.log.Warn("renewal: could not record the path auto chose", "file", ChoiceFile, "err", err)
	}
	path := c.path(r.cfg.Renewal.ESTURL)
	r.log.Info("renewal: path auto decided", "path", path, "why", c.why(r.cfg.Renewal.ESTURL))
	if err := r.setPath(path, c.why(r.cfg.Renewal.ESTURL)); err != nil {
		// Cannot happen: the operational slot of the undecided state was
		// set up with the same key spec.
		r.log.Error("renewal: setting up the path auto chose", "path", path, "err", err)
	}
}

// registerAuto is the first DPS registration with path "auto": with a
// CSR, so that DPS's answer says whether the enrollment issues
// certificates. DPS may ignore the CSR (assigned without a chain) or
// refuse it (400); both variants are accepted (docs/dps.md).
func (r *Renewal) registerAuto(ctx context.Context, id *credential.Credential) (*statedir.Assignment, error) {
	r.ensureDeviceID(id.DeviceID())
	res, err := r.w.TrySync(ctx, r.viaDPS, "registration (renewal path auto: does DPS issue certificates?)")
	var st *dps.StatusError
	switch {
	case err == nil || errors.Is(err, rotate.ErrProbe) || errors.Is(err, rotate.ErrBadChain):
		// DPS issued: whatever became of the certificate, the
		// enrollment issues them.
		r.decide(&Choice{DPSIssues: true, Evidence: "DPS issued a certificate at registration: the enrollment offers certificate issuance"})
		if err != nil {
			return nil, fmt.Errorf("register with certificate issuance: %v", err)
		}
		return r.issuedAssignment(res)
	case errors.Is(err, dps.ErrNotIssued):
		r.mu.Lock()
		as := r.assigned
		r.mu.Unlock()
		if as == nil {
			return nil, fmt.Errorf("register: %w", err)
		}
		r.decide(&Choice{Evidence: "DPS assigned the device without issuing a certificate: the enrollment does not offer certificate issuance"})
		cp := *as
		return &cp, nil
	case errors.As(err, &st) && st.Status == 400:
		// Refused the CSR: register as without renewal through DPS.
		as, rerr := r.register(ctx, id)
		if rerr != nil {
			return nil, rerr
		}
		r.decide(&Choice{Evidence: fmt.Sprintf("DPS refused the CSR at registration (status 400, errorCode %d: %s)", st.ErrorCode, st.Message)})
		return as, nil
	}
	return nil, fmt.Errorf("register: %w", err)
}

// decideWithoutDPS decides path auto when there is no DPS to ask.
func (r *Renewal) decideWithoutDPS(why string) {
	r.decide(&Choice{Evidence: why})
}
