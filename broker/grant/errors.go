package grant

import "errors"

var (
	// ErrInvalidGrant reports a grant document that cannot be parsed or does not validate.
	// Errors returned by Parse and Validate match it with errors.Is.
	ErrInvalidGrant = errors.New("invalid access grant")

	// ErrDuplicateGrant reports two grants with the same name in one Set (one file, or two
	// sources given to Merge).
	ErrDuplicateGrant = errors.New("duplicate access grant name")

	// ErrInvalidConfig reports a FileSourceConfig that is missing a required field.
	ErrInvalidConfig = errors.New("invalid grant source config")

	// ErrGrantsFile reports a grants file that cannot be read (missing, unreadable, too large).
	ErrGrantsFile = errors.New("cannot read grants file")
)
