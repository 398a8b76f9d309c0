//! Every SQL statement the metadata layer runs, one per file under
//! `queries/meta/`, compiled in with `include_str!`.

// Numbers cross between SQLite (i64), the kernel (u32, u64) and Rust
// (usize) here: each conversion is checked, none wraps or truncates.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

macro_rules! queries {
    ($($name:ident => $file:literal),* $(,)?) => {
        $(pub const $name: &str =
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/queries/meta/", $file, ".sql"));)*
        /// All statements with their file names, for the prepare-everything test.
        pub const ALL: &[(&str, &str)] = &[$(($file, $name)),*];
    };
}

queries! {
    STORE_GET => "store_get",
    STORE_SET => "store_set",
    INODE_GET => "inode_get",
    INODE_INSERT => "inode_insert",
    INODE_INSERT_ROOT => "inode_insert_root",
    INODE_MAX => "inode_max",
    INODE_UPDATE => "inode_update",
    INODE_DELETE => "inode_delete",
    INODE_TARGET => "inode_target",
    INODE_UNLINKED => "inode_unlinked",
    DENTRY_LOOKUP => "dentry_lookup",
    DENTRY_LIST => "dentry_list",
    DENTRY_INSERT => "dentry_insert",
    DENTRY_DELETE => "dentry_delete",
    DENTRY_SET_INO => "dentry_set_ino",
    DENTRY_ANY => "dentry_any",
    DENTRY_PARENT => "dentry_parent",
    DENTRY_PARENTS => "dentry_parents",
    DENTRY_NAMES => "dentry_names",
    DIR_PERMS => "dir_perms",
    TAG_FILES => "tag_files",
    CHUNK_LIST => "chunk_list",
    CHUNK_HASHES => "chunk_hashes",
    CHUNK_UPSERT => "chunk_upsert",
    CHUNK_DELETE => "chunk_delete",
    CHUNK_DELETE_FROM => "chunk_delete_from",
    CHUNK_DELETE_ALL => "chunk_delete_all",
    BLOB_GET => "blob_get",
    BLOB_INSERT => "blob_insert",
    BLOB_INCREF => "blob_incref",
    BLOB_DECREF => "blob_decref",
    BLOB_DELETE => "blob_delete",
    BLOB_LOCS => "blob_locs",
    BLOB_ALL => "blob_all",
    BLOB_UNREFERENCED => "blob_unreferenced",
    BLOB_REFCOUNT_MISMATCH => "blob_refcount_mismatch",
    CHUNK_MISSING_BLOB => "chunk_missing_blob",
    CHUNK_ORPHAN => "chunk_orphan",
    DENTRY_ORPHAN => "dentry_orphan",
    NLINK_MISMATCH => "nlink_mismatch",
    XATTR_GET => "xattr_get",
    XATTR_SET => "xattr_set",
    XATTR_LIST => "xattr_list",
    XATTR_DELETE => "xattr_delete",
    XATTR_DELETE_ALL => "xattr_delete_all",
    STATS => "stats",
    BARRIER => "barrier",
    TAG_CREATE => "tag_create",
    TAG_DELETE => "tag_delete",
    TAG_EXISTS => "tag_exists",
    TAG_USED => "tag_used",
    TAG_RENAME => "tag_rename",
    TAG_RENAME_USES => "tag_rename_uses",
    TAG_COUNTS => "tag_counts",
    TAG_NAMES => "tag_names",
    FILE_TAGS_GET => "file_tags_get",
    FILE_TAG_GET => "file_tag_get",
    FILE_TAG_SET => "file_tag_set",
    FILE_TAG_PLACE => "file_tag_place",
    FILE_TAGS_PLACED => "file_tags_placed",
    FILE_TAG_DELETE => "file_tag_delete",
    FILE_TAG_DELETE_ALL => "file_tag_delete_all",
    INODE_CHASH => "inode_chash",
    SAVED_GET => "saved_get",
    SAVED_SET => "saved_set",
    SAVED_DELETE => "saved_delete",
    SAVED_LIST => "saved_list",
}
