# Board-specific config for fieldagent: this board's sensors and its broker.
FILESEXTRAPATHS:prepend := "${THISDIR}/files:"
SRC_URI += "file://config.yaml"

# file:// entries unpack into WORKDIR on scarthgap and into UNPACKDIR from styhead on.
FIELDAGENT_FILES = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

do_install:append() {
    install -m 0644 ${FIELDAGENT_FILES}/config.yaml ${D}${sysconfdir}/fieldagent/config.yaml
}
