package dist

import (
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// header marks a generated file; the comment leader differs per format.
func header(lead, what string) string {
	return fmt.Sprintf("%s %s\n%s Generated from agent/dist/manifest.toml by \"make dist-gen\"; do not edit.\n", lead, what, lead)
}

// Generate returns every generated file kept in the repository, by path
// relative to root. The man pages need the Go toolchain (ManPages builds
// the binaries); the notices are separate (Notices): they also need the
// module cache.
func Generate(root string) (map[string][]byte, error) {
	m, err := LoadManifest(root)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	tmpl, err := ConfigTemplate(root)
	if err != nil {
		return nil, err
	}
	out["agent/dist/config.toml"] = tmpl
	out["agent/dist/devid.sysusers"] = m.sysusers()
	out["agent/dist/devid.tmpfiles"] = m.tmpfiles("devid-agent")
	out["agent/dist/deb/copyright"] = m.copyright()
	for _, p := range m.Packages {
		for name, b := range m.maintScripts(p) {
			out["agent/dist/deb/"+p.Name+"."+name] = b
		}
		out["agent/dist/deb/"+p.Name+".lintian-overrides"] = lintianOverrides(p)
	}
	for name, b := range m.yoctoLayer() {
		out[name] = b
	}
	for name, b := range m.buildrootTree() {
		out[name] = b
	}
	man, err := ManPages(root)
	if err != nil {
		return nil, err
	}
	for name, b := range man {
		out[name] = b
	}
	return out, nil
}

// WriteGenerated writes what Generate returns under root.
func WriteGenerated(root string, files map[string][]byte) error {
	for name, b := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".postinst") || strings.HasSuffix(name, ".prerm") || strings.HasSuffix(name, ".postrm") {
			mode = 0o755
		}
		if err := os.WriteFile(p, b, mode); err != nil {
			return err
		}
		if err := os.Chmod(p, mode); err != nil {
			return err
		}
	}
	return nil
}

// sysusers is sysusers.d(5) for the agent's user.
func (m *Manifest) sysusers() []byte {
	u := m.User
	var b bytes.Buffer
	b.WriteString(header("#", "sysusers.d(5) for devid-agent: /usr/lib/sysusers.d/devid.conf."))
	fmt.Fprintf(&b, "g %s -\n", u.Name)
	fmt.Fprintf(&b, "u %s -:%s %q %s %s\n", u.Name, u.Name, u.Gecos, u.Home, u.Shell)
	b.WriteString("# TPM (tss, as Debian's tpm-udev names it) and serial ports (dialout).\n")
	for _, g := range u.Groups {
		fmt.Fprintf(&b, "m %s %s\n", u.Name, g)
	}
	return b.Bytes()
}

// tmpfiles is tmpfiles.d(5) for a package: its directories, and a "z" line
// for each installed file whose owners the package manager cannot set
// (a group the package creates itself).
func (m *Manifest) tmpfiles(pkg string) []byte {
	var b bytes.Buffer
	b.WriteString(header("#", "tmpfiles.d(5) for "+pkg+": /usr/lib/tmpfiles.d/devid.conf."))
	for _, d := range m.DirsOf(pkg) {
		fmt.Fprintf(&b, "# %s\n", d.Why)
		fmt.Fprintf(&b, "d %s %s %s %s -\n", d.Path, d.Mode, d.Owner, d.Group)
	}
	for _, f := range m.FilesOf(pkg) {
		if f.Owner != "root" || f.Group != "root" {
			fmt.Fprintf(&b, "# %s: owners the package cannot set at unpack time\n", f.Dst)
			fmt.Fprintf(&b, "z %s %s %s %s -\n", f.Dst, f.Mode, f.Owner, f.Group)
		}
	}
	return b.Bytes()
}

// copyright is the machine-readable debian/copyright file (DEP-5).
func (m *Manifest) copyright() []byte {
	var b bytes.Buffer
	b.WriteString("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n")
	b.WriteString("Upstream-Name: devid\n")
	fmt.Fprintf(&b, "Source: %s\n", m.Homepage)
	b.WriteString("Comment: The binaries are statically linked Go programs. The third-party\n")
	b.WriteString(" modules they contain, with versions and licence texts, are listed in\n")
	b.WriteString(" third-party-notices.txt beside this file.\n\n")
	b.WriteString("Files: *\n")
	fmt.Fprintf(&b, "Copyright: %s\n", m.Copyright)
	fmt.Fprintf(&b, "License: %s\n", m.License)
	b.WriteString(` Licensed under the Apache License, Version 2.0 (the "License");
 you may not use this file except in compliance with the License.
 You may obtain a copy of the License at
 .
 http://www.apache.org/licenses/LICENSE-2.0
 .
 Unless required by applicable law or agreed to in writing, software
 distributed under the License is distributed on an "AS IS" BASIS,
 WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
 See the License for the specific language governing permissions and
 limitations under the License.
 .
 On Debian systems, the complete text of the Apache License, Version 2.0
 can be found in "/usr/share/common-licenses/Apache-2.0".
`)
	return b.Bytes()
}

func lintianOverrides(p Package) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# lintian overrides for %s, each with its reason.\n", p.Name)
	b.WriteString("# Generated from agent/dist/manifest.toml by \"make dist-gen\"; do not edit.\n")
	for _, o := range p.LintianOverride {
		b.WriteString("\n")
		for _, line := range wrap(o.Reason, 74) {
			fmt.Fprintf(&b, "# %s\n", line)
		}
		fmt.Fprintf(&b, "%s: %s\n", p.Name, o.Tag)
	}
	return b.Bytes()
}

// maintScripts are the Debian maintainer scripts, in the shape debhelper's
// dh_installsysusers, dh_installtmpfiles, dh_installudev and
// dh_installsystemd give them: users and directories first, then the unit
// enabled through deb-systemd-helper. A new install enables the unit but
// does not start it (the template must be edited first); an upgrade
// restarts a running service.
func (m *Manifest) maintScripts(p Package) map[string][]byte {
	if p.Unit == "" {
		return nil
	}
	sysusers, _ := m.FileOfKind(p.Name, "sysusers")
	tmpfiles, _ := m.FileOfKind(p.Name, "tmpfiles")
	configure := `if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ]; then`
	var post bytes.Buffer
	post.WriteString("#!/bin/sh\n")
	post.WriteString(header("#", "postinst for "+p.Name+"."))
	post.WriteString("set -e\n\n")
	if sysusers.Dst != "" {
		fmt.Fprintf(&post, "# The %s user and its groups.\n%s\n\tsystemd-sysusers ${DPKG_ROOT:+--root=\"$DPKG_ROOT\"} %s\nfi\n\n", m.User.Name, configure, path.Base(sysusers.Dst))
	}
	if tmpfiles.Dst != "" {
		fmt.Fprintf(&post, "# Directories and the owners of files in them.\n%s\n\tif [ -x \"$(command -v systemd-tmpfiles)\" ]; then\n\t\tsystemd-tmpfiles ${DPKG_ROOT:+--root=\"$DPKG_ROOT\"} --create %s || true\n\tfi\nfi\n\n", configure, path.Base(tmpfiles.Dst))
	}
	if p.Udev {
		fmt.Fprintf(&post, "# Device groups for devices present now (the TPM, GPIO chips).\n%s\n\tif [ -z \"${DPKG_ROOT:-}\" ] && [ -d /run/udev ] && command -v udevadm >/dev/null; then\n\t\tudevadm control --reload-rules || true\n\t\tudevadm trigger --subsystem-match=tpmrm --subsystem-match=gpio --action=change || true\n\tfi\nfi\n\n", configure)
	}
	unit := p.Unit
	fmt.Fprintf(&post, `# The unit: enabled on a new install (deb-systemd-helper remembers an
# administrator's "disable"), started by "systemctl enable --now" once the
# config is edited; restarted on upgrade when it was running.
%s
	deb-systemd-helper unmask '%[2]s' >/dev/null || true
	if deb-systemd-helper --quiet was-enabled '%[2]s'; then
		deb-systemd-helper enable '%[2]s' >/dev/null || true
	else
		deb-systemd-helper update-state '%[2]s' >/dev/null || true
	fi
	if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
		systemctl --system daemon-reload >/dev/null || true
		if [ -n "$2" ]; then
			deb-systemd-invoke try-restart '%[2]s' >/dev/null || true
		fi
	fi
fi
`, configure, unit)

	var prerm bytes.Buffer
	prerm.WriteString("#!/bin/sh\n")
	prerm.WriteString(header("#", "prerm for "+p.Name+"."))
	fmt.Fprintf(&prerm, "set -e\n\nif [ -z \"${DPKG_ROOT:-}\" ] && [ \"$1\" = remove ] && [ -d /run/systemd/system ]; then\n\tdeb-systemd-invoke stop '%s' >/dev/null || true\nfi\n", unit)

	var postrm bytes.Buffer
	postrm.WriteString("#!/bin/sh\n")
	postrm.WriteString(header("#", "postrm for "+p.Name+"."))
	fmt.Fprintf(&postrm, `set -e

# The state directory (the device's key and certificate) is never removed,
# not even on purge: it is the device's identity.
if [ "$1" = "remove" ] && [ -d /run/systemd/system ]; then
	systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = "remove" ] && [ -x "/usr/bin/deb-systemd-helper" ]; then
	deb-systemd-helper mask '%[1]s' >/dev/null || true
fi
if [ "$1" = "purge" ] && [ -x "/usr/bin/deb-systemd-helper" ]; then
	deb-systemd-helper purge '%[1]s' >/dev/null || true
	deb-systemd-helper unmask '%[1]s' >/dev/null || true
fi
`, unit)
	return map[string][]byte{"postinst": post.Bytes(), "prerm": prerm.Bytes(), "postrm": postrm.Bytes()}
}

// imageFiles are a package's files for Yocto and Buildroot.
func (m *Manifest) imageFiles(pkg string) []File {
	var out []File
	for _, f := range m.FilesOf(pkg) {
		if f.ForImages() {
			out = append(out, f)
		}
	}
	return out
}

// localName is the name a file has in a recipe's files directory.
func localName(f File) string {
	src := f.Src
	if i := strings.IndexByte(src, ':'); i >= 0 {
		src = src[i+1:]
	}
	return path.Base(src)
}

// yoctoVars maps install directories to the bitbake variables a recipe
// must use for them (a distro without usrmerge puts units under /lib).
var yoctoVars = [][2]string{
	{"/usr/lib/systemd/system", "${systemd_system_unitdir}"},
	{"/usr/lib/sysusers.d", "${nonarch_libdir}/sysusers.d"},
	{"/usr/lib/tmpfiles.d", "${nonarch_libdir}/tmpfiles.d"},
	{"/usr/lib/udev/rules.d", "${nonarch_base_libdir}/udev/rules.d"},
	{"/usr/share/man", "${mandir}"},
	{"/usr/share/doc", "${docdir}"},
	{"/usr/bin", "${bindir}"},
	{"/etc", "${sysconfdir}"},
	{"/var", "${localstatedir}"},
}

// YoctoDir maps an install directory to its bitbake form.
func YoctoDir(dir string) string {
	for _, v := range yoctoVars {
		if dir == v[0] || strings.HasPrefix(dir, v[0]+"/") {
			return v[1] + strings.TrimPrefix(dir, v[0])
		}
	}
	return dir
}

// YoctoDirBack is YoctoDir's inverse (for the test that reads recipes).
func YoctoDirBack(dir string) string {
	for _, v := range yoctoVars {
		if dir == v[1] || strings.HasPrefix(dir, v[1]+"/") {
			return v[0] + strings.TrimPrefix(dir, v[1])
		}
	}
	return dir
}

// gunzipped is the name a man page has before packaging compresses it.
func gunzipped(dst string) string { return strings.TrimSuffix(dst, ".gz") }

const imageReadme = `The files under files/ are not in the repository: "make package" writes
this %[1]s with files/ filled in (static binaries for arm64, arm and
x86-64, unit, sysusers, tmpfiles, udev rules, config template, docs) to
.build/dist/%[2]s. It cannot be built on the devid CI machines (no %[1]s
toolchain there); the test in agent/dist checks that it installs exactly
the files, modes and owners of agent/dist/manifest.toml.
`

func (m *Manifest) yoctoLayer() map[string][]byte {
	const base = "agent/dist/yocto/meta-devid/"
	out := map[string][]byte{}
	out[base+"conf/layer.conf"] = []byte(header("#", "meta-devid: devid for Yocto/OpenEmbedded images.") + `BBPATH .= ":${LAYERDIR}"
BBFILES += "${LAYERDIR}/recipes-*/*/*.bb"
BBFILE_COLLECTIONS += "devid"
BBFILE_PATTERN_devid = "^${LAYERDIR}/"
BBFILE_PRIORITY_devid = "6"
LAYERDEPENDS_devid = "core"
LAYERSERIES_COMPAT_devid = "kirkstone scarthgap"
`)
	files := m.imageFiles("devid-agent")
	var b bytes.Buffer
	b.WriteString(header("#", "devid-agent: the prebuilt static devid agent, its unit, user and config."))
	fmt.Fprintf(&b, `SUMMARY = "devid device identity agent"
DESCRIPTION = "Gives the board its own identity: TPM-held key, factory CSR over UART, Azure IoT Hub DPS registration and hub connection."
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# Prebuilt: the static Go binaries are in files/ (see README.md).
SRC_URI = "\
`)
	for _, f := range files {
		if f.Kind == "binary" {
			fmt.Fprintf(&b, "    file://%s-${DEVID_GOARCH} \\\n", localName(f))
		} else {
			fmt.Fprintf(&b, "    file://%s \\\n", localName(f))
		}
	}
	b.WriteString(`"
S = "${WORKDIR}"
DEVID_GOARCH = "${@ {'aarch64': 'arm64', 'arm': 'arm', 'x86_64': 'amd64'}[d.getVar('TARGET_ARCH')]}"
COMPATIBLE_HOST = "(aarch64|arm|x86_64).*-linux"
INSANE_SKIP:${PN} += "already-stripped ldflags"

inherit systemd useradd
SYSTEMD_SERVICE:${PN} = "devid-agent.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"
USERADD_PACKAGES = "${PN}"
`)
	fmt.Fprintf(&b, "GROUPADD_PARAM:${PN} = \"--system %s\"\n", m.User.Name)
	fmt.Fprintf(&b, "USERADD_PARAM:${PN} = \"--system --gid %s --groups %s --home-dir %s --no-create-home --shell %s %s\"\n",
		m.User.Name, strings.Join(m.User.Groups, ","), m.User.Home, m.User.Shell, m.User.Name)
	b.WriteString("RDEPENDS:${PN} += \"systemd\"\n\ndo_install() {\n")
	var dirs []string
	for _, f := range files {
		d := YoctoDir(path.Dir(gunzipped(f.Dst)))
		if !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	for _, d := range dirs {
		fmt.Fprintf(&b, "    install -d ${D}%s\n", d)
	}
	for _, f := range files {
		src := localName(f)
		if f.Kind == "binary" {
			src += "-${DEVID_GOARCH}"
		}
		dst := YoctoDir(path.Dir(gunzipped(f.Dst))) + "/" + path.Base(gunzipped(f.Dst))
		fmt.Fprintf(&b, "    install -m %s ${WORKDIR}/%s ${D}%s\n", f.Mode, src, dst)
		if f.Owner != "root" || f.Group != "root" {
			fmt.Fprintf(&b, "    chown %s:%s ${D}%s\n", f.Owner, f.Group, dst)
		}
	}
	for _, d := range m.DirsOf("devid-agent") {
		yd := YoctoDir(d.Path)
		fmt.Fprintf(&b, "    install -d -m %s ${D}%s\n    chown %s:%s ${D}%s\n", d.Mode, yd, d.Owner, d.Group, yd)
	}
	b.WriteString("}\n\nFILES:${PN} += \"\\\n")
	for _, f := range files {
		fmt.Fprintf(&b, "    %s/%s* \\\n", YoctoDir(path.Dir(gunzipped(f.Dst))), path.Base(gunzipped(f.Dst)))
	}
	for _, d := range m.DirsOf("devid-agent") {
		fmt.Fprintf(&b, "    %s \\\n", YoctoDir(d.Path))
	}
	b.WriteString("\"\n")
	for _, f := range files {
		if f.Kind == "config" {
			fmt.Fprintf(&b, "CONFFILES:${PN} = \"%s\"\n", YoctoDir(f.Dst))
		}
	}
	out[base+"recipes-devid/devid-agent/devid-agent.bb"] = b.Bytes()
	out[base+"README.md"] = []byte(`# meta-devid

A Yocto/OpenEmbedded layer that installs the prebuilt, statically linked
devid agent with the same files, modes and owners as the Debian package
(agent/dist/manifest.toml; docs/packaging.md).

    bitbake-layers add-layer meta-devid
    IMAGE_INSTALL:append = " devid-agent"     # in local.conf or the image recipe

Needs systemd as the init manager (the unit, sysusers.d and tmpfiles.d).
Edit /etc/devid/config.toml in a bbappend or at first boot; then
"devid-agent config check" on the device.

` + fmt.Sprintf(imageReadme, "layer", "meta-devid-VERSION.tar.gz") + "\nGenerated from agent/dist/manifest.toml by \"make dist-gen\"; do not edit.\n")
	return out
}

func (m *Manifest) buildrootTree() map[string][]byte {
	const base = "agent/dist/buildroot/"
	out := map[string][]byte{}
	out[base+"external.desc"] = []byte("name: DEVID\ndesc: devid device identity agent (generated from agent/dist/manifest.toml)\n")
	out[base+"external.mk"] = []byte(header("#", "The devid external tree.") + "include $(sort $(wildcard $(BR2_EXTERNAL_DEVID_PATH)/package/*/*.mk))\n")
	out[base+"Config.in"] = []byte(header("#", "The devid external tree.") + "source \"$BR2_EXTERNAL_DEVID_PATH/package/devid-agent/Config.in\"\n")
	out[base+"package/devid-agent/Config.in"] = []byte(header("#", "devid-agent.") + `config BR2_PACKAGE_DEVID_AGENT
	bool "devid-agent"
	depends on BR2_aarch64 || BR2_arm || BR2_x86_64
	depends on BR2_INIT_SYSTEMD
	help
	  devid device identity agent: TPM-held key, factory CSR over
	  UART, Azure IoT Hub DPS registration and hub connection.
	  Installs the prebuilt static binary (see README.md).

comment "devid-agent needs systemd and an arm, aarch64 or x86_64 target"
	depends on !BR2_INIT_SYSTEMD || !(BR2_aarch64 || BR2_arm || BR2_x86_64)
`)
	files := m.imageFiles("devid-agent")
	var b bytes.Buffer
	b.WriteString(header("#", "devid-agent: the prebuilt static devid agent, its unit, user and config."))
	b.WriteString(`DEVID_AGENT_VERSION = $(shell cat $(BR2_EXTERNAL_DEVID_PATH)/package/devid-agent/files/VERSION)
DEVID_AGENT_SITE = $(BR2_EXTERNAL_DEVID_PATH)/package/devid-agent/files
DEVID_AGENT_SITE_METHOD = local
DEVID_AGENT_LICENSE = Apache-2.0
DEVID_AGENT_LICENSE_FILES = LICENSE

ifeq ($(BR2_aarch64),y)
DEVID_AGENT_GOARCH = arm64
else ifeq ($(BR2_arm),y)
DEVID_AGENT_GOARCH = arm
else
DEVID_AGENT_GOARCH = amd64
endif

`)
	u := m.User
	fmt.Fprintf(&b, "define DEVID_AGENT_USERS\n\t%s -1 %s -1 * %s %s %s %s\nendef\n\n", u.Name, u.Name, u.Home, u.Shell, strings.Join(u.Groups, ","), u.Gecos)
	b.WriteString("define DEVID_AGENT_INSTALL_TARGET_CMDS\n")
	for _, f := range files {
		src := localName(f)
		if f.Kind == "binary" {
			src += "-$(DEVID_AGENT_GOARCH)"
		}
		dst := gunzipped(f.Dst)
		fmt.Fprintf(&b, "\t$(INSTALL) -D -m %s $(@D)/%s $(TARGET_DIR)%s\n", f.Mode, src, dst)
	}
	b.WriteString("endef\n\n")
	b.WriteString("define DEVID_AGENT_PERMISSIONS\n")
	for _, f := range files {
		if f.Owner != "root" || f.Group != "root" {
			fmt.Fprintf(&b, "\t%s f %s %s %s - - - - -\n", gunzipped(f.Dst), f.Mode, f.Owner, f.Group)
		}
	}
	for _, d := range m.DirsOf("devid-agent") {
		fmt.Fprintf(&b, "\t%s d %s %s %s - - - - -\n", d.Path, d.Mode, d.Owner, d.Group)
	}
	b.WriteString("endef\n\n")
	if p, ok := m.Package("devid-agent"); ok && p.Unit != "" {
		fmt.Fprintf(&b, "define DEVID_AGENT_INSTALL_INIT_SYSTEMD\n\t$(INSTALL) -d $(TARGET_DIR)/etc/systemd/system/multi-user.target.wants\n\tln -sf /usr/lib/systemd/system/%[1]s $(TARGET_DIR)/etc/systemd/system/multi-user.target.wants/%[1]s\nendef\n\n", p.Unit)
	}
	b.WriteString("$(eval $(generic-package))\n")
	out[base+"package/devid-agent/devid-agent.mk"] = b.Bytes()
	out[base+"README.md"] = []byte(`# devid Buildroot external tree

Installs the prebuilt, statically linked devid agent with the same files,
modes and owners as the Debian package (agent/dist/manifest.toml;
docs/packaging.md).

    make BR2_EXTERNAL=/path/to/devid-buildroot menuconfig   # Target packages -> devid-agent
    make

Needs BR2_INIT_SYSTEMD (the unit, sysusers.d and tmpfiles.d files).

` + fmt.Sprintf(imageReadme, "tree", "devid-buildroot-VERSION.tar.gz") + "\nGenerated from agent/dist/manifest.toml by \"make dist-gen\"; do not edit.\n")
	return out
}
