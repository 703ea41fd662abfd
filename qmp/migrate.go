package qmp

import (
	"context"
	"fmt"
	"os"
	"slices"
	"time"
)

// Migration capabilities qchain uses (QAPI MigrationCapability).
const (
	// CapPauseBeforeSwitchover makes an outgoing migration stop in status
	// MigrationPreSwitchover once the source's vCPUs are stopped and
	// before the device state is written or the disks are handed over, until
	// migrate-continue: the instant at which every disk can be snapshotted
	// together with the memory (QEMU 2.11+).
	CapPauseBeforeSwitchover = "pause-before-switchover"
	// CapMappedRAM writes each RAM page at a fixed offset of a file: URI's
	// file instead of streaming it, so a file has a bounded size however
	// often the guest dirties a page (QEMU 9.0+). The loading side must
	// set it too.
	CapMappedRAM = "mapped-ram"
)

// Migration statuses (QAPI MigrationStatus) qchain acts on.
const (
	MigrationNone          = "none"
	MigrationSetup         = "setup"
	MigrationActive        = "active"
	MigrationDevice        = "device"
	MigrationPreSwitchover = "pre-switchover"
	MigrationCompleted     = "completed"
	MigrationFailed        = "failed"
	MigrationCancelled     = "cancelled"
	MigrationCancelling    = "cancelling"
)

// MigrationCapability is QAPI's MigrationCapabilityStatus.
type MigrationCapability struct {
	Capability string `json:"capability"`
	State      bool   `json:"state"`
}

// MigrationInfo is the part of query-migrate's reply qchain reads.
type MigrationInfo struct {
	// Status is empty before any migration (QEMU omits it) or one of the
	// Migration* statuses.
	Status    string `json:"status,omitempty"`
	ErrorDesc string `json:"error-desc,omitempty"`
	// TotalTime is in milliseconds.
	TotalTime int64 `json:"total-time,omitempty"`
}

// StatusInfo is query-status's reply: the VM's run state ("running",
// "paused", "postmigrate", "inmigrate", "prelaunch", ...).
type StatusInfo struct {
	Status  string `json:"status"`
	Running bool   `json:"running"`
}

// QueryStatus runs query-status.
func (c *Conn) QueryStatus(ctx context.Context) (*StatusInfo, error) {
	var out StatusInfo
	if err := c.Execute(ctx, "query-status", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Stop runs stop: the vCPUs stop and QEMU drains and flushes the disks.
func (c *Conn) Stop(ctx context.Context) error { return c.Execute(ctx, "stop", nil, nil) }

// Cont runs cont: the vCPUs run again (after a migration, QEMU first
// takes the disks back).
func (c *Conn) Cont(ctx context.Context) error { return c.Execute(ctx, "cont", nil, nil) }

// SystemPowerdown runs system_powerdown: an ACPI power button press the
// guest may ignore.
func (c *Conn) SystemPowerdown(ctx context.Context) error {
	return c.Execute(ctx, "system_powerdown", nil, nil)
}

// QueryMigrateCapabilities runs query-migrate-capabilities.
func (c *Conn) QueryMigrateCapabilities(ctx context.Context) ([]MigrationCapability, error) {
	var out []MigrationCapability
	if err := c.Execute(ctx, "query-migrate-capabilities", nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// HasMigrateCapability reports whether this QEMU knows the capability.
func (c *Conn) HasMigrateCapability(ctx context.Context, name string) (bool, error) {
	caps, err := c.QueryMigrateCapabilities(ctx)
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(caps, func(m MigrationCapability) bool { return m.Capability == name }), nil
}

// MigrateSetCapabilities runs migrate-set-capabilities.
func (c *Conn) MigrateSetCapabilities(ctx context.Context, caps []MigrationCapability) error {
	return c.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": caps}, nil)
}

// Migrate runs migrate to uri ("file:PATH" on QEMU 8.2+, "fd:NAME" after
// GetFd, "exec:CMD", ...); the migration goes on in the background.
func (c *Conn) Migrate(ctx context.Context, uri string) error {
	return c.Execute(ctx, "migrate", map[string]any{"uri": uri}, nil)
}

// MigrateIncoming runs migrate-incoming on a QEMU started with -incoming
// defer.
func (c *Conn) MigrateIncoming(ctx context.Context, uri string) error {
	return c.Execute(ctx, "migrate-incoming", map[string]any{"uri": uri}, nil)
}

// MigrateContinue runs migrate-continue: a migration paused in state
// (MigrationPreSwitchover) goes on.
func (c *Conn) MigrateContinue(ctx context.Context, state string) error {
	return c.Execute(ctx, "migrate-continue", map[string]any{"state": state}, nil)
}

// MigrateCancel runs migrate_cancel.
func (c *Conn) MigrateCancel(ctx context.Context) error {
	return c.Execute(ctx, "migrate_cancel", nil, nil)
}

// QueryMigrate runs query-migrate.
func (c *Conn) QueryMigrate(ctx context.Context) (*MigrationInfo, error) {
	var out MigrationInfo
	if err := c.Execute(ctx, "query-migrate", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// GetFd passes f to QEMU under name, for a "fd:NAME" migration URI. The
// name belongs to this connection's monitor: the command that uses it
// must be sent on the same Conn. QEMU keeps its own copy of the
// descriptor.
func (c *Conn) GetFd(ctx context.Context, name string, f *os.File) error {
	return c.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": name}, nil, f)
}

// MigrationError is a migration that ended in failed or cancelled.
type MigrationError struct {
	Status string
	Desc   string
}

func (e *MigrationError) Error() string {
	if e.Desc == "" {
		return "migration " + e.Status
	}
	return fmt.Sprintf("migration %s: %s", e.Status, e.Desc)
}

// CapEvents makes QEMU send a MIGRATION event at every status change
// (QEMU 2.4+). WaitMigration wakes on them; without them it polls.
const CapEvents = "events"

// migrationPoll is how often WaitMigration asks when no MIGRATION event
// comes (the events capability is off): polling query-migrate is the
// truth, events only say when to ask.
const migrationPoll = 50 * time.Millisecond

// WaitMigration asks query-migrate until the status is one of want, and
// returns that status; it asks again at every MIGRATION event (see
// CapEvents) and at least every migrationPoll. A migration that failed or
// was cancelled (and is not wanted) is a *MigrationError.
func (c *Conn) WaitMigration(ctx context.Context, want ...string) (*MigrationInfo, error) {
	// Subscribed before the first query, so no change falls between
	// the query and the wait.
	sub, err := c.Subscribe(ctx, "MIGRATION")
	if err != nil {
		return nil, err
	}
	defer sub.Close()
	tick := time.NewTimer(migrationPoll)
	defer tick.Stop()
	for {
		info, err := c.QueryMigrate(ctx)
		if err != nil {
			return nil, err
		}
		if slices.Contains(want, info.Status) {
			if info.Status == MigrationCompleted {
				return info, c.waitFinishMigrate(ctx)
			}
			return info, nil
		}
		switch info.Status {
		case MigrationFailed, MigrationCancelled:
			return info, &MigrationError{Status: info.Status, Desc: info.ErrorDesc}
		}
		tick.Reset(migrationPoll)
		select {
		case <-ctx.Done():
			return info, fmt.Errorf("qmp: waiting for the migration (%s): %w", info.Status, ctx.Err())
		case <-c.done:
			return info, fmt.Errorf("qmp: waiting for the migration (%s): %w", info.Status, c.Err())
		case <-sub.C():
		case <-tick.C:
		}
	}
}

// waitFinishMigrate waits until the run state is no longer
// "finish-migrate": an outgoing migration reports completed (and sends its
// event) before its clean-up moves the VM to "postmigrate", and until
// then cont fails with "Migration is not finalized yet". The clean-up
// sends no event; it takes a few milliseconds.
func (c *Conn) waitFinishMigrate(ctx context.Context) error {
	pause := time.Millisecond
	for {
		st, err := c.QueryStatus(ctx)
		if err != nil || st.Status != "finish-migrate" {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("qmp: waiting for the migration's clean-up: %w", ctx.Err())
		case <-c.done:
			return fmt.Errorf("qmp: waiting for the migration's clean-up: %w", c.Err())
		case <-time.After(pause):
			pause = min(2*pause, 20*time.Millisecond)
		}
	}
}
