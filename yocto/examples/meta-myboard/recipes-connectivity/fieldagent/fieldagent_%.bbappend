# Board-specific config for fieldagent: this board's sensors and its broker, as a drop-in merged
# over the package's config.yaml, which stays as shipped (a new version's comments and defaults
# arrive with it; nothing to merge by hand).
FILESEXTRAPATHS:prepend := "${THISDIR}/files:"
SRC_URI += "file://10-board.yaml"

# file:// entries unpack into WORKDIR on scarthgap and into UNPACKDIR from styhead on.
FIELDAGENT_FILES = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

do_install:append() {
    install -m 0644 ${FIELDAGENT_FILES}/10-board.yaml ${D}${sysconfdir}/fieldagent/conf.d/10-board.yaml
}

FILES:${PN} += "${sysconfdir}/fieldagent/conf.d/10-board.yaml"
