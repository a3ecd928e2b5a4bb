SUMMARY = "fieldagent and what it uses on a board"
DESCRIPTION = "Add it to an image with IMAGE_INSTALL:append = \" packagegroup-fieldagent\"."
BUGTRACKER = "https://github.com/fieldagent/fieldagent/issues"
SECTION = "net"
LICENSE = "MIT"

inherit packagegroup

RDEPENDS:${PN} = "\
    fieldagent \
    i2c-tools \
"
