# devid-agent: the prebuilt static devid agent, its unit, user and config.
# Generated from agent/dist/manifest.toml by "make dist-gen"; do not edit.
SUMMARY = "devid device identity agent"
DESCRIPTION = "Gives the board its own identity: TPM-held key, factory CSR over UART, Azure IoT Hub DPS registration and hub connection."
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# Prebuilt: the static Go binaries are in files/ (see README.md).
SRC_URI = "\
    file://devid-agent-${DEVID_GOARCH} \
    file://devid-agent.service \
    file://devid.sysusers \
    file://devid.tmpfiles \
    file://59-devid.rules \
    file://config.toml \
    file://devid-agent.8 \
    file://agent.md \
    file://config.md \
    file://local-api.md \
    file://packaging.md \
    file://third-party-notices.txt \
"
S = "${WORKDIR}"
DEVID_GOARCH = "${@ {'aarch64': 'arm64', 'arm': 'arm', 'x86_64': 'amd64'}[d.getVar('TARGET_ARCH')]}"
COMPATIBLE_HOST = "(aarch64|arm|x86_64).*-linux"
INSANE_SKIP:${PN} += "already-stripped ldflags"

inherit systemd useradd
SYSTEMD_SERVICE:${PN} = "devid-agent.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"
USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system devid"
USERADD_PARAM:${PN} = "--system --gid devid --groups tss,dialout --home-dir /var/lib/devid --no-create-home --shell /usr/sbin/nologin devid"
RDEPENDS:${PN} += "systemd"

do_install() {
    install -d ${D}${bindir}
    install -d ${D}${systemd_system_unitdir}
    install -d ${D}${nonarch_libdir}/sysusers.d
    install -d ${D}${nonarch_libdir}/tmpfiles.d
    install -d ${D}${nonarch_base_libdir}/udev/rules.d
    install -d ${D}${sysconfdir}/devid
    install -d ${D}${mandir}/man8
    install -d ${D}${docdir}/devid-agent
    install -m 0755 ${WORKDIR}/devid-agent-${DEVID_GOARCH} ${D}${bindir}/devid-agent
    install -m 0644 ${WORKDIR}/devid-agent.service ${D}${systemd_system_unitdir}/devid-agent.service
    install -m 0644 ${WORKDIR}/devid.sysusers ${D}${nonarch_libdir}/sysusers.d/devid.conf
    install -m 0644 ${WORKDIR}/devid.tmpfiles ${D}${nonarch_libdir}/tmpfiles.d/devid.conf
    install -m 0644 ${WORKDIR}/59-devid.rules ${D}${nonarch_base_libdir}/udev/rules.d/59-devid.rules
    install -m 0640 ${WORKDIR}/config.toml ${D}${sysconfdir}/devid/config.toml
    chown root:devid ${D}${sysconfdir}/devid/config.toml
    install -m 0644 ${WORKDIR}/devid-agent.8 ${D}${mandir}/man8/devid-agent.8
    install -m 0644 ${WORKDIR}/agent.md ${D}${docdir}/devid-agent/agent.md
    install -m 0644 ${WORKDIR}/config.md ${D}${docdir}/devid-agent/config.md
    install -m 0644 ${WORKDIR}/local-api.md ${D}${docdir}/devid-agent/local-api.md
    install -m 0644 ${WORKDIR}/packaging.md ${D}${docdir}/devid-agent/packaging.md
    install -m 0644 ${WORKDIR}/third-party-notices.txt ${D}${docdir}/devid-agent/third-party-notices.txt
    install -d -m 0750 ${D}${sysconfdir}/devid
    chown root:devid ${D}${sysconfdir}/devid
    install -d -m 0700 ${D}${localstatedir}/lib/devid
    chown devid:devid ${D}${localstatedir}/lib/devid
}

FILES:${PN} += "\
    ${bindir}/devid-agent* \
    ${systemd_system_unitdir}/devid-agent.service* \
    ${nonarch_libdir}/sysusers.d/devid.conf* \
    ${nonarch_libdir}/tmpfiles.d/devid.conf* \
    ${nonarch_base_libdir}/udev/rules.d/59-devid.rules* \
    ${sysconfdir}/devid/config.toml* \
    ${mandir}/man8/devid-agent.8* \
    ${docdir}/devid-agent/agent.md* \
    ${docdir}/devid-agent/config.md* \
    ${docdir}/devid-agent/local-api.md* \
    ${docdir}/devid-agent/packaging.md* \
    ${docdir}/devid-agent/third-party-notices.txt* \
    ${sysconfdir}/devid \
    ${localstatedir}/lib/devid \
"
CONFFILES:${PN} = "${sysconfdir}/devid/config.toml"
