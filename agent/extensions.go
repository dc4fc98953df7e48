package agent

// initExtensions wires optional extensions into the agent. Each one
// registers through the hook fields (extraMethods, desiredHooks,
// statusExtra, background, opt.Identity) and must not start anything:
// background functions run when Run starts.
//
// Credential renewal (issue 8) lives in rotation.go as initRenewal.
func (a *Agent) initExtensions() error {
	if ext, ok := any(a).(interface{ initRenewal() error }); ok {
		return ext.initRenewal()
	}
	return nil
}
