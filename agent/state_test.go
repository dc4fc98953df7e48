package agent

import (
	"testing"
	"time"
)

func TestNextTable(t *testing.T) {
	t.Parallel()
	c := counters{maxHubFailures: 10, maxReprovisions: 3}
	cached := c
	cached.cached = true
	many := c
	many.hubFailures = 9
	many.minFailing = 15 * time.Minute
	many.failingFor = 16 * time.Minute
	manyShort := many
	manyShort.failingFor = 5 * time.Minute
	loop := c
	loop.reprovisions = 3
	cases := []struct {
		from State
		ev   Event
		c    counters
		want State
	}{
		{Unenrolled, Event{Kind: EvBoot, Identity: true}, c, Enrolled},
		{Unenrolled, Event{Kind: EvBoot, FactoryPort: true}, c, Factory},
		{Unenrolled, Event{Kind: EvBoot}, c, Unenrolled},
		{Connected, Event{Kind: EvFactoryButton}, c, Factory},
		{Factory, Event{Kind: EvFactoryDone, Identity: true}, c, Enrolled},
		{Factory, Event{Kind: EvFactoryDone}, c, Unenrolled},
		{Enrolled, Event{Kind: EvClockOK, Cached: true}, c, Connecting},
		{Enrolled, Event{Kind: EvClockOK}, c, Provisioning},
		{Provisioning, Event{Kind: EvAssigned}, c, Connecting},
		{Provisioning, Event{Kind: EvDPSRefused}, c, Revoked},
		{Provisioning, Event{Kind: EvDPSError}, c, Backoff},
		{Provisioning, Event{Kind: EvClockBad}, c, Enrolled},
		{Connecting, Event{Kind: EvHubConnected}, c, Connected},
		{Connecting, Event{Kind: EvHubFailed}, c, Backoff},
		{Connecting, Event{Kind: EvHubFailed}, many, Reprovisioning},
		{Connecting, Event{Kind: EvHubFailed}, manyShort, Backoff},
		{Connecting, Event{Kind: EvHubFailed, AuthRefused: true}, c, Reprovisioning},
		{Connecting, Event{Kind: EvHubFailed, AuthRefused: true}, loop, Revoked},
		{Connecting, Event{Kind: EvClockBad}, c, Enrolled},
		{Connected, Event{Kind: EvHubFailed}, c, Backoff},
		{Connected, Event{Kind: EvReprovision}, c, Reprovisioning},
		{Backoff, Event{Kind: EvTimer}, cached, Connecting},
		{Backoff, Event{Kind: EvTimer}, c, Provisioning},
		{Revoked, Event{Kind: EvTimer}, c, Reprovisioning},
		{Revoked, Event{Kind: EvHubConnected}, c, Revoked},
		{Error, Event{Kind: EvTimer, Identity: true}, c, Enrolled},
		{Error, Event{Kind: EvTimer}, c, Unenrolled},
		{Connected, Event{Kind: EvFatal}, c, Error},
		{Connected, Event{Kind: EvAssigned}, c, Connected},
	}
	for _, tc := range cases {
		if got := next(tc.from, tc.ev, tc.c); got != tc.want {
			t.Errorf("next(%s, %s) = %s, want %s", tc.from, tc.ev.Kind, got, tc.want)
		}
	}
}

func TestStateNamesRoundTrip(t *testing.T) {
	t.Parallel()
	for s := State(0); s < numStates; s++ {
		got, err := ParseState(s.String())
		if err != nil || got != s {
			t.Errorf("%s: %v %v", s, got, err)
		}
	}
	if _, err := ParseState("nope"); err == nil {
		t.Error("unknown name parsed")
	}
}
