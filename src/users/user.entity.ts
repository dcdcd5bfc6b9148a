import { Exclude } from 'class-transformer';
import { Column, CreateDateColumn, Entity, PrimaryGeneratedColumn, UpdateDateColumn } from 'typeorm';

export type UserRole = 'user' | 'admin';

@Entity({ name: 'users' })
// Case-insensitive uniqueness lives in functional indexes created by the migration
// (lower(username), lower(email)); TypeORM cannot describe expression indexes.
export class UserEntity {
  @PrimaryGeneratedColumn('uuid')
  id: string;

  @Column({ type: 'varchar', length: 32 })
  username: string;

  @Column({ type: 'varchar', length: 254 })
  email: string;

  // Never serialised: UsersService hands this entity to host code, whose `return user` must not
  // answer the hash (toJSON below for plain JSON, @Exclude for ClassSerializerInterceptor).
  @Exclude({ toPlainOnly: true })
  @Column({ name: 'password_hash', type: 'varchar', length: 100 })
  passwordHash: string;

  @Column({ type: 'varchar', length: 16, default: 'user' })
  role: UserRole;

  @CreateDateColumn({ name: 'created_at', type: 'timestamptz' })
  createdAt: Date;

  @UpdateDateColumn({ name: 'updated_at', type: 'timestamptz' })
  updatedAt: Date;

  toJSON(): UserProfile {
    const { passwordHash: _hash, ...profile } = this;
    return profile;
  }
}

/** A user as their own profile shows them: every column but the password hash. */
export type UserProfile = Pick<UserEntity, 'id' | 'username' | 'email' | 'role' | 'createdAt' | 'updatedAt'>;
