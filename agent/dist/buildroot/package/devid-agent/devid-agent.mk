# devid-agent: the prebuilt static devid agent, its unit, user and config.
# Generated from agent/dist/manifest.toml by "make dist-gen"; do not edit.
DEVID_AGENT_VERSION = $(shell cat $(BR2_EXTERNAL_DEVID_PATH)/package/devid-agent/files/VERSION)
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

define DEVID_AGENT_USERS
	devid -1 devid -1 * /var/lib/devid /usr/sbin/nologin tss,dialout devid device identity agent
endef

define DEVID_AGENT_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(@D)/devid-agent-$(DEVID_AGENT_GOARCH) $(TARGET_DIR)/usr/bin/devid-agent
	$(INSTALL) -D -m 0644 $(@D)/devid-agent.service $(TARGET_DIR)/usr/lib/systemd/system/devid-agent.service
	$(INSTALL) -D -m 0644 $(@D)/devid.sysusers $(TARGET_DIR)/usr/lib/sysusers.d/devid.conf
	$(INSTALL) -D -m 0644 $(@D)/devid.tmpfiles $(TARGET_DIR)/usr/lib/tmpfiles.d/devid.conf
	$(INSTALL) -D -m 0644 $(@D)/59-devid.rules $(TARGET_DIR)/usr/lib/udev/rules.d/59-devid.rules
	$(INSTALL) -D -m 0640 $(@D)/config.toml $(TARGET_DIR)/etc/devid/config.toml
	$(INSTALL) -D -m 0644 $(@D)/devid-agent.8 $(TARGET_DIR)/usr/share/man/man8/devid-agent.8
	$(INSTALL) -D -m 0644 $(@D)/agent.md $(TARGET_DIR)/usr/share/doc/devid-agent/agent.md
	$(INSTALL) -D -m 0644 $(@D)/config.md $(TARGET_DIR)/usr/share/doc/devid-agent/config.md
	$(INSTALL) -D -m 0644 $(@D)/local-api.md $(TARGET_DIR)/usr/share/doc/devid-agent/local-api.md
	$(INSTALL) -D -m 0644 $(@D)/packaging.md $(TARGET_DIR)/usr/share/doc/devid-agent/packaging.md
	$(INSTALL) -D -m 0644 $(@D)/third-party-notices.txt $(TARGET_DIR)/usr/share/doc/devid-agent/third-party-notices.txt
endef

define DEVID_AGENT_PERMISSIONS
	/etc/devid/config.toml f 0640 root devid - - - - -
	/etc/devid d 0750 root devid - - - - -
	/var/lib/devid d 0700 devid devid - - - - -
endef

define DEVID_AGENT_INSTALL_INIT_SYSTEMD
	$(INSTALL) -d $(TARGET_DIR)/etc/systemd/system/multi-user.target.wants
	ln -sf /usr/lib/systemd/system/devid-agent.service $(TARGET_DIR)/etc/systemd/system/multi-user.target.wants/devid-agent.service
endef

$(eval $(generic-package))
