package main

import (
	"fmt"
	"strings"

	"devid/agent/queue"
	"devid/agent/statedir"
)

// queue reports what the telemetry queue on disk says: messages that did
// not or will not reach the hub, and damaged queue files.
func (c *checker) queue() {
	st, err := queue.Inspect((&statedir.Dir{Path: c.cfg.StateDir}).File(statedir.QueueDir))
	if err != nil {
		c.add("queue", "warn", err.Error(), permHint(err, c.cfg.StateDir, "the agent creates the queue on first start"))
		return
	}
	if st.CursorError != "" {
		c.add("queue", "fail", st.CursorError, "a newer agent's cursor is never overwritten: run that agent; a damaged one is set aside at the next start")
		return
	}
	var problems []string
	if st.Dropped > 0 {
		problems = append(problems, fmt.Sprintf("%d dropped (queue full)", st.Dropped))
	}
	if st.Corrupt > 0 {
		problems = append(problems, fmt.Sprintf("%d damaged records skipped", st.Corrupt))
	}
	if st.SetAside > 0 {
		problems = append(problems, fmt.Sprintf("%d refused by the hub, kept in queue/setaside.log", st.SetAside))
	}
	if st.CursorSetAside != "" {
		problems = append(problems, "a damaged ack cursor was set aside as "+st.CursorSetAside)
	}
	detail := fmt.Sprintf("%d messages waiting, %d bytes", st.Depth, st.Bytes)
	if len(problems) > 0 {
		c.add("queue", "warn", detail+"; "+strings.Join(problems, "; "), "see the agent's log; damaged storage may need replacing (docs/state-dir.md)")
		return
	}
	c.add("queue", "pass", detail, "")
}

// setAside names each damaged file set aside in the state dir
// (statedir.SetAsideFiles): the agent carries on without them, and they
// stay until an operator looks at them.
func (c *checker) setAside() {
	files, err := statedir.SetAsideFiles(c.cfg.StateDir)
	if err != nil && c.live != nil && c.live.SetAsideError == "" {
		// The caller may not read the 0700 state dir; the agent can.
		files, err = c.live.SetAsideFiles, nil
	}
	if err != nil {
		c.add("set-aside", "warn", "cannot list them: "+err.Error(), permHint(err, c.cfg.StateDir, "see the agent's log"))
		return
	}
	if len(files) == 0 {
		c.add("set-aside", "pass", "no damaged files set aside", "")
		return
	}
	c.add("set-aside", "warn", fmt.Sprintf("%d damaged file(s) set aside: %s", len(files), strings.Join(files, ", ")),
		"the agent carries on without them (the log says why each was set aside); keep them for a bug report, then remove them. "+
			"Repeated damage means failing storage (docs/state-dir.md)")
}
