// Command boardinit is /init (PID 1) of the emulated devid board's initramfs.
//
// It does what a product's init system does for devid, and nothing more:
// mounts /proc, /sys and devtmpfs; loads the kernel modules listed in
// /modules.list with finit_module, then mounts configfs where one of them
// brought it; configures eth0 over rtnetlink; bridges
// the kernel's vTPM proxy to a host swtpm over a virtio-serial port, so that
// /dev/tpmrm0 exists (Debian's arm64 kernel has no tpm_tis); mounts the
// persistent ext4 "flash" disk and bind-mounts its config and state
// directories onto /etc/devid and /var/lib/devid; starts devid-agent as a
// child and reaps every child; and powers the board off when the host asks
// on the control port, or when the agent exits in test mode.
//
// Settings come from devid.* keys on the kernel command line:
//
//	devid.ip=10.0.2.15/24 devid.gw=10.0.2.2   eth0 address and default route
//	devid.vtpm=swtpm                           virtio-serial port name of the swtpm data channel ("" = no TPM)
//	devid.ctl=devid.ctl                        virtio-serial port name of the control channel
//	devid.flash=/dev/vda                       the flash disk
//	devid.args=run,--config,/etc/devid/config.toml   agent arguments, comma-separated
//	devid.exit=poweroff|restart                what to do when the agent exits
//	devid.selftest=1                           run the board self-test instead of the agent
//	devid.echo=10.0.2.100:7                    self-test: TCP echo address
//	devid.uart=/dev/ttyS0                      self-test: factory UART
//	devid.usbrelay=/dev/ttyACM*                join that tty (the host side of the board's own
//	                                           USB gadget, on dummy_hcd) to the virtio-serial
//	                                           port devid.factory (usbrelay_linux.go)
//
// The control channel takes one command per line: "poweroff" stops the agent
// (SIGTERM, then SIGKILL), syncs, unmounts the flash and powers off;
// "status" answers with the agent's pid; "usb-unplug" and "usb-plug" pull
// and plug the board's USB cable (its gadget's UDC unbound, bound again);
// "usb-host" lists what the board's USB host side enumerated.
//
// Console lines start with "[board +S.SSSs]"; the harness reads the
// "devid-board:" markers only to know when to act, never as the verdict.
package main
